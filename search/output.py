"""What the driver prints and writes besides Tune's files: quiet libraries (Ray and Optuna
only with -v), the plan, the trial and epoch tables, the leaderboard and the retrain table."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from results.storage import display
from search.algorithms import SCHEDULERS, describe
from search.flags import REPO_ROOT

if TYPE_CHECKING:  # annotations only
    from search.prepared import Prepared
    from search.resources import Resources


# Set by quiet_libraries(); workers on other nodes get them through the runtime env.
QUIET_ENV = ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "TOKENIZERS_PARALLELISM",
             "PYTHONWARNINGS")


def quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Tune's classic reporter: one compact status table every 30 s with our columns
    # (the newer output prints a box per result, which buries progress in long sweeps).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    # Every epoch checkpoints, so Tune snapshots its state often; that is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Workers import this project even when it is not pip-installed.
    parts = [str(REPO_ROOT)] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))


def quiet_ray(verbose: bool) -> None:
    """Without -v, Ray and Optuna say only what goes wrong: the sweep prints its own progress
    (search.progress). Tune's interrupt hint (Tuner.restore) is among what is hidden: the
    sweep's own says --resume."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    os.environ["PEFT_SWEEPS_RAY_LOG_LEVEL"] = "WARNING" if verbose else "ERROR"


def write_tables(plan, known: set[str] | None = None, interrupted: set[str] = frozenset()):
    """trials.csv and epochs.csv. ``known``: the trial ids in Tune's experiment state; a trial
    folder outside it was started after the last state snapshot of a killed driver and was
    replaced on resume, so it is left out of the tables. ``interrupted``: trials still running
    when the sweep was interrupted (not stopped by the scheduler; --resume continues them)."""
    from results import epoch_frame, read_trials, trial_frame

    records = read_trials(plan.exp_dir)
    if known is not None:
        stray = [r for r in records if r.trial_id not in known]
        records = [r for r in records if r.trial_id in known]
        if stray:
            print(f"(left out of the tables: {len(stray)} trial folder(s) of a killed driver "
                  f"that Tune replaced on resume: {', '.join(r.path.name for r in stray)})",
                  flush=True)
    from results.frames import FAILED, INTERRUPTED

    params = list(plan.space)
    trials = trial_frame(plan.exp_dir, metric=plan.study.metric, mode=plan.study.mode,
                         records=records, params=params)
    epochs = epoch_frame(plan.exp_dir, records=records, params=params)
    if interrupted and len(trials):
        cut = trials["trial_id"].isin(interrupted) & (trials["status"] != FAILED)
        trials.loc[cut, "status"] = INTERRUPTED
    # Which search produced these rows, beside the swept values.
    for frame in (trials, epochs):
        if len(frame):
            frame.insert(1, "searcher", plan.searcher)
            frame.insert(2, "scheduler", plan.scheduler)
            frame.insert(3, "search_seed", plan.seed)
    trials.to_csv(plan.exp_dir / "trials.csv", index=False)
    epochs.to_csv(plan.exp_dir / "epochs.csv", index=False)
    return trials, epochs


def print_plan(plan, prepared: Prepared, res: Resources) -> None:
    where = (f"{res.gpus} of {res.found} GPUs, {plan.gpus_per_trial:g} GPU + "
             f"{plan.cpus_per_trial:g} CPU per trial" if res.gpus else
             f"CPU only ({res.cpus} CPUs, {plan.cpus_per_trial:g} per trial)")
    if res.address:
        where = f"cluster at {res.address} ({res.nodes} nodes, {res.cpus} CPUs): {where}"
    lines = [f"== {plan.study.name}: {'resuming ' if plan.resume else ''}"
             f"{display(plan.remote, plan.storage_path, plan.name)}",
             *(f"   {k}: {v}" for k, v in prepared.describe.items()),
             f"   resources: {where}; {plan.concurrency} trials at a time; a failed trial is "
             f"retried up to {plan.max_failures} times from its last checkpoint",
             *([f"   memory: {plan.memory_per_trial / 2**30:.1f} GiB per trial ("
                f"{plan.memory_note['basis']}); {plan.memory_note['available_gib']:g} GiB "
                f"available: {plan.memory_note['fit']} fit"
                + (f", {plan.memory_note['fitted']}" if plan.memory_note.get("fitted") else "")]
               if plan.memory_note else []),
             *([f"   packed: up to {plan.pack} trials at once in one engine holding the base "
                f"model once ({'the GPU' if res.gpus else f'all {plan.total_cpus} CPUs'}"
                + (f", {plan.engine_memory / 2**30:.1f} GiB planned: "
                   f"{plan.memory_note['packed']['basis']}; and each trial's own process "
                   f"{plan.client_memory / 2**30:.1f} GiB" if plan.engine_memory else "")
                + ")" + ("; compiled, with static shapes (every slot the largest batch's "
                         "rows, a few length buckets: one graph per bucket)"
                         if plan.fixed.get("compile") else "")
                + "; each is still its own trial; the retrain runs unpacked"]
               if plan.pack > 1 else []),
             *([f"   disk: about {plan.disk_note['need_mb']:,.0f} MB written "
                f"({plan.disk_note['basis']}); {plan.disk_note['free_mb']:,} MB free"]
               if plan.disk_note else []),
             f"   search: {plan.num_samples} trials x up to {plan.max_epochs} epochs, "
             f"{describe(plan)}; retrain picks by {plan.study.metric}",
             *([f"   warm start: {len(plan.warm_start)} configurations evaluated first"]
               if plan.warm_start else []),
             *(f"   {k}: {v.describe()}" for k, v in plan.space.items()),
             f"   retrain: top {plan.retrain_top_k} x {plan.retrain_seeds} seeds"]
    print("\n".join(lines), flush=True)


def print_leaderboard(plan, trials) -> None:
    from results import leaderboard, read_trials
    from results.report_parts import times_text

    from results.frames import FAILED, STOPPED

    n_stopped = int((trials["status"] == STOPPED).sum()) if "status" in trials else 0
    failed = trials[trials["status"] == FAILED] if "status" in trials else trials.iloc[0:0]
    stops = (f"{n_stopped} stopped early by {SCHEDULERS[plan.scheduler].label}"
             if plan.scheduler != "none" else "no scheduler")
    print(f"\n== Leaderboard ({len(trials)} trials, {stops}, "
          f"{len(failed)} failed, {times_text(**_times(read_trials(plan.exp_dir)))}) — "
          f"{plan.study.metric} on the selection split",
          flush=True)
    for _, t in failed.iterrows():
        print(f"   trial {t['trial_id']} failed: {t['failure']}", flush=True)
    with _pandas_wide():
        print(leaderboard(trials, metric=plan.study.metric, params=list(plan.space))
              .to_string(index=False), flush=True)
    print(f"tables: {plan.exp_dir / 'trials.csv'}, {plan.exp_dir / 'epochs.csv'}", flush=True)


def _times(records) -> dict:
    from results.frames import sweep_times

    t = sweep_times(records)
    return {"active_s": t["active_s"], "elapsed_s": t["elapsed_s"]}


def print_retrain(summary, hp: list[str], plan, *, split: str | None = None,
                  baseline: float | None = None) -> None:
    """``split``: where the retrains were reported, in words (default: the study's);
    ``baseline``: the majority class's accuracy there, shown as the last row."""
    import re

    import pandas as pd

    exp_dir = plan.exp_dir
    if summary.empty:
        print("\n== Retrain: no finished retrains", flush=True)
        return
    from results.tables import display, measured

    shown = display(summary, hp, columns=[c for c in measured(summary)
                                          if re.match(plan.study.report_columns, c)])
    if baseline and "dev_accuracy" in shown:
        row = {c: "" for c in shown.columns}
        row.update({"rank": "majority class", "dev_accuracy": f"{baseline:.4f}", "dev_mcc": "0"})
        shown = pd.concat([shown.astype(object), pd.DataFrame([row])], ignore_index=True)
    print(f"\n== Retrained best configurations, reported on {split or plan.study.report_split} "
          f"(mean ± sd over seeds, {plan.study.retrain_weights})", flush=True)
    with _pandas_wide():
        print(shown.to_string(index=False), flush=True)
    print(f"tables: {exp_dir / 'retrain.csv'}, {exp_dir / 'retrain_runs.csv'}; "
          f"models: {exp_dir / 'retrained'}", flush=True)


def _pandas_wide():
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_columns", 30,
                             "display.float_format", "{:.4g}".format)
