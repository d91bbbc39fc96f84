"""Retraining the best configurations of a finished sweep: which ones (never a failed trial),
the jobs (configuration x seed) as one Tune grid on the same trial harness, each finished job
saved at once (a rerun skips it), and the table of their held-out results."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd

from search import signals
from search.disk import RETRAIN_CHECKPOINTS

from search.sweep import (RETRAIN_DIR, RETRAIN_EXPERIMENT, SweepPlan, _reporter, _run_config,
                          _trial_dirname, _wrapped_trainable, progress)


def config_key(hparams: dict) -> str:
    blob = json.dumps(hparams, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def top_configs(trials: pd.DataFrame, plan: SweepPlan) -> list[dict]:
    """The swept values of the best ``retrain_top_k`` trials, best first."""
    metric = plan.study.metric
    ok = trials[trials[metric].notna()] if metric in trials else trials.iloc[0:0]
    if "status" in ok:  # a failed trial (non-finite loss, crash) keeps a best-so-far: never it
        ok = ok[ok["status"] != "failed"]
    out = []
    for _, row in ok.head(plan.retrain_top_k).iterrows():
        hp = {k: row[k] for k in plan.space}
        hp = {k: (v.item() if hasattr(v, "item") else v) for k, v in hp.items()}
        out.append({"trial_id": row["trial_id"], "sweep_metric": float(row[metric]), "hparams": hp})
    return out


def save_retrain_job(out_root: Path, job: dict, metrics: dict, checkpoint) -> None:
    """<out_root>/<job>/: the final checkpoint (weights, meta.json) and metrics.json. Written
    whole, then renamed: a half-copied job never looks finished."""
    target = out_root / job["_job"]
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with checkpoint.as_directory() as d:
        shutil.copytree(d, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
    keep = {k: v for k, v in metrics.items()
            if isinstance(v, (int, float, str)) and k not in ("config",)}
    (tmp / "metrics.json").write_text(json.dumps(
        {"job": job["_job"], "rank": job["_rank"], "sweep_trial": job["_sweep_trial"],
         "config": {k: v for k, v in job.items() if not k.startswith("_")},
         "metrics": keep}, indent=1, default=str))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _retrain_saver(out_root: Path, push=None):
    """A Tune callback (ray is imported only when a retrain runs)."""
    from ray import tune

    class SaveRetrain(tune.Callback):
        """Saves each retrain job the moment it completes, so that a driver killed midway
        keeps every finished job (a rerun skips those)."""

        def __init__(self, out_root: Path, push):
            self.out_root = out_root
            self.push = push  # copies a saved job to cloud storage, when there is one

        def on_trial_complete(self, iteration, trials, trial, **info):
            job = (trial.config or {}).get("job")
            result = trial.last_result or {}
            if job is None or trial.checkpoint is None or not result.get("complete"):
                return  # failed or interrupted: no metrics.json, so a rerun retrains it
            save_retrain_job(self.out_root, job, result, trial.checkpoint)
            if self.push is not None:
                self.push(self.out_root / job["_job"])

    return SaveRetrain(out_root, push)


def retrain(plan: SweepPlan, trials: pd.DataFrame, data, provenance: dict) -> pd.DataFrame:
    """Retrain the top configurations with ``retrain_seeds`` seeds each on the full training
    set; report the last epoch on the held-out dev split. Jobs whose metrics.json exists are
    skipped, so rerunning after an interruption finishes only what is missing."""
    from ray import tune

    out_root = plan.exp_dir / RETRAIN_DIR
    jobs = []
    for rank, top in enumerate(top_configs(trials, plan), start=1):
        key = config_key(top["hparams"])
        for s in range(plan.retrain_seeds):
            job_id = f"{key}-seed{plan.seed + s}"
            jobs.append({**plan.fixed, **top["hparams"], "stage": "retrain", "seed": plan.seed + s,
                         "_metric": plan.study.metric,
                         "_job": job_id, "_rank": rank, "_sweep_trial": top["trial_id"]})
    pending = [j for j in jobs if not (out_root / j["_job"] / "metrics.json").is_file()]
    # With cloud storage, each saved job also goes to the bucket at once.
    push = (None if plan.remote is None else
            lambda job_dir: plan.remote.push(job_dir, plan.name, RETRAIN_DIR, job_dir.name))
    threads = retrain_threads(plan, len(pending))
    for j in pending:
        j["num_threads"] = threads
    print(f"[retrain] {len(jobs)} jobs ({plan.retrain_top_k} configs x {plan.retrain_seeds} seeds), "
          f"{len(jobs) - len(pending)} already done, {len(pending)} to run"
          + (f", {threads} CPUs each" if pending else ""), flush=True)
    if pending:
        tuner = tune.Tuner(
            _wrapped_trainable(plan, data, provenance, {**plan.resources, "cpu": threads}),
            # One grid point per job; the trial harness unwraps config["job"].
            param_space={"job": tune.grid_search([{k: (list(v) if isinstance(v, tuple) else v)
                                                   for k, v in j.items()} for j in pending])},
            tune_config=tune.TuneConfig(max_concurrent_trials=plan.concurrency, reuse_actors=plan.reuse_actors,
                                        trial_dirname_creator=_trial_dirname),
            run_config=_run_config(
                plan, RETRAIN_EXPERIMENT, (plan.name,), keep=RETRAIN_CHECKPOINTS, score=None,  # the latest
                reporter=(_reporter(["epoch", plan.study.report_metric], ["job/_job"])
                          if plan.verbose else None),
                callbacks=[_retrain_saver(out_root, push), progress(plan, retrain=True)],
                verbose=int(plan.verbose)),
        )
        with signals.tune_fit():
            tuner.fit()  # each job is saved by SaveRetrain as soon as it finishes
    missing = [j["_job"] for j in jobs if not (out_root / j["_job"] / "metrics.json").is_file()]
    if missing:
        print(f"[retrain] not finished: {', '.join(missing)}; rerun the same command with "
              "--resume to finish them", flush=True)
    return retrain_frame(out_root, list(plan.space)), not missing


def retrain_threads(plan: SweepPlan, jobs: int) -> int:
    """CPUs (and torch threads) per retrain job: the sweep's per-trial share, or, when fewer
    jobs than trial slots are left on one machine, the slots' CPUs shared out among them (a
    single job on a 2-CPU machine gets both)."""
    if not plan.node_cpus or jobs < 1 or jobs >= plan.concurrency:
        return int(plan.cpus_per_trial)
    return max(int(plan.cpus_per_trial), min(plan.node_cpus, plan.total_cpus) // jobs)


# Result keys that are bookkeeping, not measurements of the retrained model.
_NOT_MEASURES = {"seed", "complete", "last_epoch", "patience_stop", "training_iteration",
                 "time_total_s", "time_this_iter_s", "timestamp", "pid", "done",
                 "time_since_restore", "iterations_since_restore"}


def retrain_frame(out_root: Path, hparam_names: list[str]) -> pd.DataFrame:
    """One row per finished retrain job: rank, seed, swept values, every numeric metric of
    its final result, and the git commit."""
    rows = []
    for f in sorted(out_root.glob("*/metrics.json")):
        m = json.loads(f.read_text())
        rows.append({"job": m["job"], "rank": m["rank"], "sweep_trial": m["sweep_trial"],
                     "seed": m["config"]["seed"],
                     **{k: m["config"].get(k) for k in hparam_names},
                     **{k: v for k, v in m["metrics"].items()
                        if (isinstance(v, (int, float)) and not isinstance(v, bool)
                            and k not in _NOT_MEASURES) or k == "git_commit"}})
    return pd.DataFrame(rows)


def summarize_retrain(runs: pd.DataFrame, hparam_names: list[str],
                      pattern: str = r"^dev(_in|_out)?_(accuracy|mcc)$") -> pd.DataFrame:
    """mean, sd and n over seeds per configuration (results.tables.summarize_seeds)."""
    from results.tables import summarize_seeds

    return summarize_seeds(runs, hparam_names, pattern)
