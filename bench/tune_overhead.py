#!/usr/bin/env python
"""How much wall time does the sweep machinery add around the training itself?

16 trials x 3 epochs of a fixed 1-second CPU workload on 2 CPUs, run three times in one Ray
session: (a) a plain Tuner with Ray's defaults around the same function trainable, (b) Tune's
floor, our Tuner settings around a bare trial (import torch, work, report), (c) our machinery
(``search.sweep.build_tuner`` + the shared trial harness with its per-epoch checkpoints,
Optuna TPE, ASHA). Prints wall / ideal for each, ideal = trial-epochs x 1 s / concurrency; wall is
``Tuner.fit()`` alone (Ray is started once, before all three).

Where ours still loses time (timestamps in the driver and the trial workers, 2 CPUs): ~5.3 s
from ``fit()`` to the first trial's start, on workers Ray started at ``ray.init`` (the driver's
own part, Tune's set-up and the first Optuna suggestions, is 0.3 s; the
rest is the actor importing ray.tune, then torch and the harness as the trainable unpickles),
~2.4 s at its first optimizer step (torch imports torch._dynamo), 0.05-0.1 s per trial switch in
a reused worker (0.25 s before trials froze the survivors of the first collection, see
``models.trial.freeze_survivors``), ~0.025 s per epoch for the report and its checkpoint, and
the ASHA packing imbalance (one slot ends up to a trial's length after the other).
The first two are a cost per worker process that sweep code cannot avoid: a Tune trial worker
must import ray.tune and torch, and torch's optimizers import torch._dynamo at their first step.
The bench times those imports in a fresh interpreter and prints the lower bound they set,
(ideal + import time) / ideal, the two workers importing side by side. On a 2-core machine:
~4.6 s in a quiet interpreter (bound ~1.26 against the 17.5 s ideal of a 35-epoch run); inside
the trial workers the same imports take 5.3-6.4 s (``PYTHONPROFILEIMPORTTIME=1`` in the worker
logs), as both import at once beside the driver, which makes the practical bound ~1.34.

    python bench/tune_overhead.py [--trials 16] [--epochs 3] [--cpus 2]   # BENCH_WORK_S=1.0
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.config import TrialConfig  # noqa: E402
from models.loop import TrialSetup  # noqa: E402

WORK_S = float(os.environ.get("BENCH_WORK_S", "1.0"))


def spin(seconds: float) -> None:
    """A fixed CPU workload: busy arithmetic for `seconds` of wall time on one core."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(1000):
            x += i * i


def score(learning_rate: float) -> float:
    """The trials' metric: lr-dependent, so that ASHA and TPE have something to rank."""
    return -abs(math.log10(learning_rate) + 3)


def bench_setup(cfg, data, device) -> TrialSetup:
    model = torch.nn.Linear(4, 2)
    batch = {"x": torch.randn(8, 4), "y": torch.randint(0, 2, (8,))}

    def loss_fn(m, b):
        spin(WORK_S)  # one "epoch" of work
        return torch.nn.functional.cross_entropy(m(b["x"]), b["y"])

    def evaluate(m):
        return {"val_mcc": score(cfg.learning_rate)}

    return TrialSetup(model=model, loss_fn=loss_fn, train_batches=lambda e: [batch],
                      steps_per_epoch=1, evaluate=evaluate, best_metric="val_mcc", mode="max",
                      save_weights=lambda d: torch.save(model.state_dict(), Path(d) / "w.pt"),
                      load_weights=lambda d: model.load_state_dict(torch.load(Path(d) / "w.pt")),
                      info={"trainable_params": 10})


def ours_trainable(config, data, provenance):
    from models.trial import run_trial

    run_trial(config, data=data, provenance=provenance, config_cls=TrialConfig,
              setup_fn=bench_setup)


def plain_trainable(config):
    """What a first Ray Tune script looks like: the same torch set-up and workload, a report
    each epoch, no checkpoints."""
    from ray import tune

    model = torch.nn.Linear(4, 2)
    torch.optim.AdamW(model.parameters(), lr=config["learning_rate"])
    for epoch in range(1, config["max_epochs"] + 1):
        spin(WORK_S)
        tune.report({"epoch": epoch, "best_val_mcc": -abs(config["learning_rate"])})


def floor_trainable(config, data, provenance):
    """The least a Tune trial of a torch model can do: import torch (as the pickled function's
    globals make the worker do), run the workload, report each epoch. No optimizer, no
    checkpoint, no harness: the same Tuner around it (reused actors, Optuna, ASHA) gives the
    floor that Tune and the imports set, below which no sweep code can go on this machine."""
    from ray import tune

    torch.nn.Linear(4, 2)
    for epoch in range(1, config["max_epochs"] + 1):
        spin(WORK_S)
        tune.report({"epoch": epoch, "best_val_mcc": score(config["learning_rate"])})


def worker_import_s(repeats: int = 2) -> float:
    """Seconds a fresh interpreter takes to import what every trial worker imports before its
    first epoch ends: ray.tune (the function-trainable actor), torch, the trial harness, and
    torch._dynamo (imported by torch.optim at the first optimizer step). Best of ``repeats``:
    a lower bound, since the trial workers import side by side and beside the driver."""
    import subprocess

    code = ("import time; t = time.perf_counter(); import ray.tune, torch, torch._dynamo; "
            "import models.trial; print(time.perf_counter() - t)")
    root = str(Path(__file__).resolve().parents[1])
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True, cwd=root).stdout.split()[-1])
               for _ in range(repeats))


def count_epochs(exp_dir: Path) -> int:
    from results import epoch_frame

    return len(epoch_frame(exp_dir))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--skip-floor", action="store_true",
                   help="leave out the bare-trainable run that measures Tune's own floor")
    args = p.parse_args()

    from search.output import quiet_libraries

    quiet_libraries()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray
    from ray import tune

    from models.registry import Study
    from search.sweep import SweepPlan, build_tuner
    from spaces.dims import LogUniform

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    storage = Path(tempfile.mkdtemp(prefix="tune-overhead-"))
    rows = []

    # (a) Ray's defaults: plain Tuner, fresh actor per trial, default loggers.
    t0 = time.perf_counter()
    tune.Tuner(plain_trainable,
               param_space={"learning_rate": tune.loguniform(1e-5, 3e-3), "max_epochs": args.epochs},
               tune_config=tune.TuneConfig(num_samples=args.trials, metric="best_val_mcc", mode="max"),
               run_config=tune.RunConfig(name="defaults", storage_path=str(storage), verbose=0)).fit()
    wall = time.perf_counter() - t0
    rows.append(("Ray defaults", wall, count_epochs(storage / "defaults"), args.cpus))

    def machinery(name: str, label: str, trainable) -> None:
        study = Study("bench", trainable, {"learning_rate": LogUniform(1e-5, 3e-3)}, TrialConfig,
                      metric="best_val_mcc", mode="max", report_metric="val_mcc")
        plan = SweepPlan(study=study, storage_path=storage, name=name,
                         space=study.space, fixed={"max_epochs": args.epochs, "seed": 0},
                         num_samples=args.trials, max_epochs=args.epochs, grace_period=1,
                         reduction_factor=2, seed=0, cpus_per_trial=1, gpus_per_trial=0,
                         concurrency=args.cpus, retrain_top_k=0, retrain_seeds=1)
        tuner = build_tuner(plan, data=None, provenance={"git_commit": "bench", "versions": ""})
        t0 = time.perf_counter()
        tuner.fit()
        wall = time.perf_counter() - t0
        rows.append((label, wall, count_epochs(storage / name), args.cpus))

    # (b) Tune's floor: our Tuner settings around a bare trainable (imports, workload, report).
    if not args.skip_floor:
        machinery("floor", "Tune floor (bare trial)", floor_trainable)
    # (c) ours: the sweep machinery every study uses.
    machinery("ours", "ours (sweep machinery)", ours_trainable)
    ray.shutdown()

    print(f"\n{'setup':<24} {'wall s':>8} {'trial-epochs':>13} {'ideal s':>8} {'wall/ideal':>11}")
    for name, wall, epochs, conc in rows:
        ideal = epochs * WORK_S / conc
        print(f"{name:<24} {wall:8.1f} {epochs:13d} {ideal:8.1f} {wall / ideal:11.2f}")
    name, wall, epochs, conc = rows[-1]
    ideal = epochs * WORK_S / conc
    imports = worker_import_s()
    print(f"\nworker imports (ray.tune, torch, torch._dynamo, harness) in a fresh process: "
          f"{imports:.1f} s; wall/ideal can be no lower than {(ideal + imports) / ideal:.2f} here")
    print(f"tune overhead (ours): wall/ideal = {wall / ideal:.2f}")


if __name__ == "__main__":
    main()
