#!/usr/bin/env python
"""One CoLA + LoRA sweep run twice through the real CLI, unpacked and with ``--pack K``: same
seed, searcher, trial count, epochs and ASHA grace period, retrain off (``--retrain-top-k 0``),
each a subprocess of ``search/cola_lora.py`` writing ``<out>/unpacked`` and ``<out>/packed``.

    python bench/packed_sweep.py --model FILE.gguf --data-dir ../shared/data/cola_public \
        --num-samples 16 --max-epochs 2 --max-train-samples 256 \
        --extra "--space batch_size=16" --out bench_out/packed_sweep
    python bench/packed_sweep.py --smoke-test --num-samples 6      # tiny model, no data

Prints side by side: each command's wall clock and the sweep's active compute time
(``results.frames.sweep_times``); each sweep's best configuration by the selection metric and
whether it is the same configuration; and, for every configuration both sweeps ran (matched on
the hyperparameters; ``--searcher random``, the default, draws its proposals from its seed
alone, so both sweeps draw the same ones in the same order), the largest per-epoch difference
of the selection MCC and of the scheduler's metric, and ASHA's decision in each sweep. ASHA's
cut-offs depend on the order in which results arrive, which packing changes, so each sweep's
per-epoch metrics are also replayed through a fresh ASHA (the sweep's own class,
``search.algorithms.build_scheduler``, driven with Ray ``Trial`` objects) in one fixed order,
the searcher's proposal order, one trial after another: decisions there differ only where the
metrics do. A replayed trial that would run past the epoch at which its sweep stopped it has
no metrics beyond that epoch (``past@e``); a comparison it cannot settle counts as open, and
a pair with a failed trial is left out (``n/a``). The memory plan may give the engine fewer
slots than ``--pack`` (the space's largest batch sets it; ``--extra "--space batch_size=16"``
lets 8 fit in 24 GiB with SmolLM2-135M); the last line names the slots it had.
Last line: ``packed/unpacked wall time: X.XX (K=.., n=.. trials each)``.
"""
from __future__ import annotations

import argparse
import numbers
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLI = Path(__file__).resolve().parents[1] / "search" / "cola_lora.py"
RUNS = ("unpacked", "packed")
# Flags the bench sets the same for both commands (or apart, for --pack); --extra may not.
OWNED = {"--pack", "--seed", "--num-samples", "--max-epochs", "--grace-period", "--searcher",
         "--scheduler", "--storage-path", "--name", "--retrain-top-k", "--resume"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="the CLI's --model (a .gguf file, a model directory)")
    p.add_argument("--data-dir", help="the CLI's --data-dir (CoLA raw/*.tsv)")
    p.add_argument("--pack", type=int, default=8, help="K: trials at once in the packed sweep")
    p.add_argument("--num-samples", type=int, default=16, help="trials in each sweep")
    p.add_argument("--max-epochs", type=int, default=2)
    p.add_argument("--grace-period", type=int, default=1, help="ASHA's, in epochs")
    p.add_argument("--max-train-samples", type=int, help="the CLI's seeded training subset")
    p.add_argument("--seed", type=int, default=0, help="searcher, split and trial seed")
    p.add_argument("--searcher", default="random",
                   choices=("random", "qmc", "tpe", "gp", "cmaes"),
                   help="random and qmc propose from their seed alone (the same configurations "
                        "in both sweeps); the others follow the results")
    p.add_argument("--extra", default="", help="more CLI flags for both commands, one string")
    p.add_argument("--smoke-test", action="store_true", help="the CLI's tiny in-process model")
    p.add_argument("--out", default="bench_out/packed_sweep", help="storage path of both")
    args = p.parse_args(argv)
    for flag, low in (("pack", 2), ("num_samples", 1), ("max_epochs", 1), ("grace_period", 1),
                      ("max_train_samples", 1)):
        value = getattr(args, flag)
        if value is not None and value < low:
            p.error(f"--{flag.replace('_', '-')} {value}: must be at least {low}")
    if args.grace_period > args.max_epochs:
        p.error(f"--grace-period {args.grace_period}: more than --max-epochs {args.max_epochs}")
    try:
        args.extra = shlex.split(args.extra)
    except ValueError as e:
        p.error(f"--extra: {e}")
    owned = sorted({a.split("=")[0] for a in args.extra} & OWNED)
    if owned:
        p.error(f"--extra: {', '.join(owned)} is set by the bench itself")
    args.out = Path(args.out).resolve()
    taken = [str(args.out / r) for r in RUNS if (args.out / r).exists()]
    if taken:
        p.error(f"--out {args.out}: {', '.join(taken)} already exists (pick a new --out)")
    return args


def command(args, run: str) -> list[str]:
    cmd = [sys.executable, str(CLI), "--seed", str(args.seed), "--num-samples",
           str(args.num_samples), "--max-epochs", str(args.max_epochs), "--grace-period",
           str(args.grace_period), "--searcher", args.searcher, "--scheduler", "asha",
           "--retrain-top-k", "0", "--storage-path", str(args.out), "--name", run]
    for flag, value in (("--model", args.model), ("--data-dir", args.data_dir),
                        ("--max-train-samples", args.max_train_samples)):
        cmd += [flag, str(value)] if value is not None else []
    cmd += ["--smoke-test"] if args.smoke_test else []
    return cmd + (["--pack", str(args.pack)] if run == "packed" else []) + args.extra


def run_sweep(cmd: list[str], log: Path) -> float:
    """The command's wall clock, its output in ``log``; a failed command ends the bench with
    its exit code (2: the CLI refused the input)."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    wall = time.monotonic() - t0
    if rc:
        sys.stderr.write(log.read_text()[-4000:])
        print(f"the command exited {rc} after {wall:.0f} s; log: {log}", file=sys.stderr)
        sys.exit(2 if rc == 2 else 1)  # 2: the CLI refused the input (its message is above)
    print(f"   {wall:.1f} s; log: {log}", flush=True)
    return wall


def proposal_order(exp) -> list[str]:
    """Trial ids in the order the searcher proposed them: Tune's experiment tag starts with
    the trial's number (Ray's own reader of the experiment state); the trial table's order
    where that cannot be read."""
    from ray.tune import ExperimentAnalysis

    ids = list(exp.trials["trial_id"])
    try:
        tags = {t.trial_id: int(t.experiment_tag.split("_", 1)[0])
                for t in ExperimentAnalysis(str(exp.path)).trials}
    except Exception as e:  # noqa: BLE001 - any unreadable state: fall back, say so
        print(f"   {exp.name}: no proposal order ({type(e).__name__}); trial table order")
        return ids
    return sorted(ids, key=lambda t: tags.get(t, len(tags) + ids.index(t)))


def sweep_decisions(exp) -> dict[str, str]:
    """ASHA's decision per trial as the trial table records it: stop@e, end, or the status."""
    return {t.trial_id: (f"stop@{int(t.epochs_run)}" if t.status == "stopped" else
                         "end" if t.status == "completed" else t.status)
            for t in exp.trials.itertuples()}


def replay_asha(exp, order: list[str]) -> dict[str, str]:
    """Each trial's per-epoch metrics through a fresh ASHA of the sweep's settings, one trial
    after another in ``order``, as Tune drives a scheduler: stop@e, end, or past@e (the replay
    runs it on, the sweep's metrics end at e)."""
    from types import SimpleNamespace

    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from search.algorithms import build_scheduler

    r, flags = exp.record, exp.record["flags"]
    metric = r["search_metric"]
    scheduler = build_scheduler(SimpleNamespace(
        scheduler="asha", searcher=r["searcher"], metric=metric, mode=r["search_mode"],
        max_epochs=flags["max_epochs"], grace_period=flags["grace_period"],
        reduction_factor=flags["reduction_factor"]))
    out = {}
    for tid in order:
        rows = exp.epochs[exp.epochs["trial_id"] == tid].sort_values("epoch")
        trial = Trial("trainable", config={}, trial_id=tid, stub=True)
        scheduler.on_trial_add(None, trial)
        trial.set_status(Trial.RUNNING)
        out[tid], result = "failed", None
        for row in rows.to_dict("records"):
            result = {"epoch": int(row["epoch"]), metric: row[metric]}
            out[tid] = f"past@{result['epoch']}"
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                out[tid] = ("end" if result["epoch"] >= flags["max_epochs"]
                            else f"stop@{result['epoch']}")
                break
        if result is None:
            scheduler.on_trial_remove(None, trial)
        else:
            scheduler.on_trial_complete(None, trial, result)
        trial.set_status(Trial.TERMINATED)
    return out


# A trial that failed or was cut off has no ASHA decision to compare: its pair is left out.
ENDED_ELSE, LEFT_OUT = {"failed", "interrupted"}, "n/a"


def agree(a: str, b: str) -> bool | None:
    """Whether two decisions are the same; None where a ``past@e`` leaves it open."""
    if not (a.startswith("past@") or b.startswith("past@")):
        return a == b
    if a.startswith("past@") and b.startswith("past@"):
        return None
    past, other = (a, b) if a.startswith("past@") else (b, a)
    if other.startswith("stop@") and int(other[5:]) <= int(past[5:]):
        return False  # stopped at a rung the other passed
    return None


def _key(trials, params: list[str]) -> list[str]:
    """One string per trial from its hyperparameters (numbers to 10 significant digits), with
    the occurrence number, so repeated configurations pair off in order."""
    def fmt(v):
        return f"{float(v):.10g}" if isinstance(v, numbers.Real) and not isinstance(v, bool) \
            else str(v)
    keys = ["|".join(fmt(v) for v in row) for row in trials[params].itertuples(index=False)]
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        seen[k] = seen.get(k, -1) + 1
        out.append(f"{k}#{seen[k]}")
    return out


def per_trial(exp, params: list[str]):
    """-> DataFrame in proposal order: the match key, trial id, ASHA's decision in the sweep and
    in the replay."""
    import pandas as pd

    order = proposal_order(exp)
    t = exp.trials.set_index("trial_id").loc[order].reset_index()
    return pd.DataFrame({"key": _key(t, params), "id": t["trial_id"],
                         "sweep": t["trial_id"].map(sweep_decisions(exp)),
                         "replay": t["trial_id"].map(replay_asha(exp, order))})


def matched(u, p, tu, tp):
    """-> DataFrame, one row per configuration both sweeps ran (``per_trial`` frames ``tu``,
    ``tp``), in the unpacked sweep's proposal order: both trial ids, the largest per-epoch
    |difference| of the selection metric and the scheduler's metric over the epochs both ran,
    ASHA's decisions (sweep, replay) and whether they agree."""
    per_epoch = [u.metric.removeprefix("best_"), u.record["search_metric"]]
    m = tu.reset_index(names="index").merge(tp, on="key", suffixes=("_u", "_p"))
    for col in per_epoch:
        m[f"d_{col}"] = [_max_diff(u.epochs, p.epochs, a, b, col)
                         for a, b in zip(m["id_u"], m["id_p"])]
    for what in ("sweep", "replay"):
        m[f"{what}_same"] = [LEFT_OUT if {a, b} & ENDED_ELSE else agree(a, b)
                             for a, b in zip(m[f"{what}_u"], m[f"{what}_p"])]
    m["index"] += 1
    return m[["index", "id_u", "id_p", *[f"d_{c}" for c in per_epoch], "sweep_u", "sweep_p",
              "sweep_same", "replay_u", "replay_p", "replay_same"]]


def _max_diff(eu, ep, tu: str, tp: str, col: str) -> float:
    a = eu[eu["trial_id"] == tu][["epoch", col]]
    b = ep[ep["trial_id"] == tp][["epoch", col]]
    both = a.merge(b, on="epoch", suffixes=("_u", "_p"))
    return float((both[f"{col}_u"] - both[f"{col}_p"]).abs().max()) if len(both) else float("nan")


def _count(values) -> str:
    values = list(values)
    gone = sum(isinstance(v, str) for v in values)
    yes, open_ = sum(v is True for v in values), sum(v is None for v in values)
    return (f"{yes} of {len(values) - gone} agree" + (f" ({open_} open)" if open_ else "")
            + (f"; {gone} left out (a trial failed)" if gone else ""))


def summarize(args, walls: dict, exps: dict) -> None:
    import pandas as pd

    u, p = exps["unpacked"], exps["packed"]
    print("\n== time (s); trials: " + ", ".join(
        f"{r} {len(e.trials)} ({(e.trials['status'] == 'failed').sum()} failed)"
        for r, e in exps.items()))
    print(pd.DataFrame({r: {"command wall clock": walls[r], "active compute": exps[r].active_s,
                            "first start to last result": exps[r].span_s}
                        for r in RUNS}).to_string(float_format=lambda v: f"{v:.2f}"))
    cols = list(u.space) + [c for c in (u.metric, "best_val_accuracy", "epochs_run")
                            if c in u.trials]
    best = {r: exps[r].trials.iloc[0] for r in RUNS}
    print(f"\n== best configuration by {u.metric} (selection split)")
    print(pd.DataFrame({r: best[r][["trial_id", *cols]] for r in RUNS}).to_string())
    same = len({_key(pd.DataFrame([best[r]]), list(u.space))[0] for r in RUNS}) == 1
    print(f"same configuration: {'yes' if same else 'no'}")
    tu, tp = (per_trial(e, list(u.space)) for e in (u, p))
    m = matched(u, p, tu, tp)
    print(f"\n== configurations in both sweeps: {len(m)} (unpacked {len(u.trials)}, "
          f"packed {len(p.trials)}); d_*: max |unpacked - packed| over the epochs both ran")
    words = {True: "yes", False: "no", None: "open", LEFT_OUT: LEFT_OUT}
    shown = m.assign(**{c: m[c].map(words) for c in ("sweep_same", "replay_same")})
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"ASHA decisions, the sweeps (arrival order): {_count(m['sweep_same'])}")
    print(f"ASHA decisions, replayed in proposal order: {_count(m['replay_same'])}")
    for r, t in (("unpacked", tu), ("packed", tp)):
        own = [LEFT_OUT if b in ENDED_ELSE else agree(a, b)
               for a, b in zip(t["replay"], t["sweep"])]
        print(f"replay in proposal order reproduces the {r} sweep's own decisions: {_count(own)}")
    k = int(p.record.get("pack") or args.pack)  # the slots the memory plan gave the engine
    if k != args.pack:
        print(f"the packed engine had {k} slots: --pack {args.pack} did not fit in memory")
    print(f"packed/unpacked wall time: {walls['packed'] / walls['unpacked']:.2f} "
          f"(K={k}, n={args.num_samples} trials each)")


def main(argv=None) -> None:
    args = parse_args(argv)
    from results.experiment import load_experiment

    args.out.mkdir(parents=True, exist_ok=True)
    walls = {r: run_sweep(command(args, r), args.out / f"{r}.log") for r in RUNS}
    exps = {r: load_experiment(args.out / r) for r in RUNS}
    summarize(args, walls, exps)


if __name__ == "__main__":
    main()
