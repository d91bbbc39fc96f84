"""ASHA's rungs and HyperBand's brackets survive an interrupted and restored experiment (Ray
restores no scheduler state, ray-project/ray#30838; ``search.resumable_schedulers`` carries it
through Tune's callback state). A real local Ray and real Tune run deterministic trainables.

ASHA, one trial at a time: trial A fills the rungs (1, 2 at epochs 1, 2), then trial B passes
rung 1 and falls under rung 2's cut-off. Uninterrupted, ASHA stops B at epoch 2. Interrupted
(SIGINT, as Ctrl-C) while B trains epoch 2 and restored with ``Tuner.restore``, B must again be
stopped at epoch 2; with empty rungs after the restore (the defect) it would run all 4 epochs.

HyperBand (max_t 2, reduction 2): a and b share a bracket that runs both to epoch 2; c and d
share one that halves at epoch 1, where c (2.0) beats d (1.0), so d stops at epoch 1 and c runs
on. Interrupted while c waits at epoch 1 for d (d's first epoch waits for a file), c must wait
again after the restore: Tune resumes it as PENDING, and run on to epoch 2 (0.5) it would lose
the halving to d. The uninterrupted outcome is checked on the real scheduler in
``tests/test_scheduler_state.py``."""
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Per-epoch metric values. A fills rung 1 with 1.0 and rung 2 with 2.0; B passes rung 1
# (1.5 >= 1.0) and falls under rung 2's cut-off (1.0 < 2.0). a to d: HyperBand's.
CURVES = {"A": [1.0, 2.0, 3.0, 4.0], "B": [1.5, 1.0, 1.1, 1.2],
          "a": [1.0, 1.0], "b": [1.0, 1.0], "c": [2.0, 0.5], "d": [1.0, 1.0]}
MAX_T = 4


def trainable(config):
    from ray import tune

    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = json.loads((Path(d) / "state.json").read_text())["epoch"]
    curve = CURVES[config["name"]]
    for epoch in range(start + 1, len(curve) + 1):
        if config["name"] == "B" and epoch == 2:
            # Long enough for the driver to be interrupted while B trains this epoch.
            time.sleep(config["slow_s"])
        if config["name"] == "d" and epoch == 1:
            while not Path(config["gate"]).exists():  # until the test opens it
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"score": curve[epoch - 1], "epoch": epoch},
                        checkpoint=tune.Checkpoint.from_directory(d))


def _tuner(storage: Path, name: str, slow_s: float, callbacks=()):
    from ray import tune

    from search.resumable_schedulers import ResumableASHA, SchedulerState

    scheduler = ResumableASHA(time_attr="epoch", metric="score", mode="max", max_t=MAX_T,
                              grace_period=1, reduction_factor=2)
    return tune.Tuner(
        trainable,
        param_space={"name": tune.grid_search(["A", "B"]), "slow_s": slow_s},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1,
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                  callbacks=[SchedulerState(scheduler), *callbacks]),
    ), scheduler


def _epochs_run(storage: Path, name: str) -> dict:
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(storage / name))
    return {t.config["name"]: (t.last_result or {}).get("epoch") for t in analysis.trials}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # Ray's workers import this module (the trainable) and the project. One Ray for the
    # module's tests: starting it takes a good part of each.
    here = Path(__file__).resolve().parent
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(
            [str(here), str(here.parent), os.environ.get("PYTHONPATH", "")]))
        saved = signal.getsignal(signal.SIGINT)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        yield
        ray.shutdown()
        signal.signal(signal.SIGINT, saved)


def test_rungs_survive_an_interrupt(tmp_path, local_ray):
    from ray import tune

    storage = tmp_path / "runs"
    tuner, _ = _tuner(storage, "whole", slow_s=0.0)
    tuner.fit()
    assert _epochs_run(storage, "whole") == {"A": 4, "B": 2}

    once = tmp_path / "interrupted"

    class InterruptDuringB(tune.Callback):
        """Ctrl-C once B has reported epoch 1 (it then sleeps through epoch 2). The callback
        is restored with the experiment, so a file says it has fired."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if trial.config["name"] == "B" and result["epoch"] == 1 and not once.exists():
                once.touch()
                signal.raise_signal(signal.SIGINT)

    tuner, _ = _tuner(storage, "cut", slow_s=8.0, callbacks=[InterruptDuringB()])
    tuner.fit()
    before = _epochs_run(storage, "cut")
    assert before["A"] == 4 and before["B"] == 1, before  # B was cut off during epoch 2

    restored = tune.Tuner.restore(str(storage / "cut"), trainable=trainable,
                                  resume_unfinished=True)
    restored.fit()
    assert _epochs_run(storage, "cut") == {"A": 4, "B": 2}
    # The rungs after the resume hold what was recorded before it too: A's values, and B's
    # epoch-1 value from before the interrupt (empty rungs would hold B's epoch-2 value alone).
    scheduler = restored._local_tuner._tune_config.scheduler
    rungs = {m: sorted(v.values()) for m, v in scheduler.rungs()[0].items()}
    assert rungs[1] == [1.0, 1.5] and rungs[2] == [1.0, 2.0], rungs


def _hyperband_tuner(storage: Path, name: str, gate: Path, callbacks=()):
    from ray import tune

    from search.resumable_schedulers import ResumableHyperBand, SchedulerState

    scheduler = ResumableHyperBand(time_attr="epoch", metric="score", mode="max", max_t=2,
                                   reduction_factor=2)
    return tune.Tuner(
        trainable,
        param_space={"name": tune.grid_search(["a", "b", "c", "d"]), "gate": str(gate)},
        # The budget only ends a run that would wait for ever (brackets lost on restore).
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=False, time_budget_s=120),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                  callbacks=[SchedulerState(scheduler), *callbacks]),
    )


def test_hyperband_brackets_survive_an_interrupt(tmp_path, local_ray):
    from ray import tune

    storage, gate, once = tmp_path / "runs", tmp_path / "gate", tmp_path / "interrupted"

    class InterruptWhileCWaits(tune.Callback):
        """Ctrl-C once HyperBand has paused c at epoch 1 to wait for d (held at its first
        epoch). Not at c's result: a decision Tune has queued but not carried out is restored
        with the experiment and carried out after the resume."""

        def on_step_begin(self, iteration, trials, **info):
            paused = [t.config["name"] for t in trials if t.status == t.PAUSED]
            if "c" in paused and not once.exists():
                once.touch()
                signal.raise_signal(signal.SIGINT)

    _hyperband_tuner(storage, "cut", gate, [InterruptWhileCWaits()]).fit()
    before = _epochs_run(storage, "cut")
    assert before["c"] == 1 and before["d"] is None, before

    gate.touch()
    restored = tune.Tuner.restore(str(storage / "cut"), trainable=trainable,
                                  resume_unfinished=True)
    restored.fit()
    assert _epochs_run(storage, "cut") == {"a": 2, "b": 2, "c": 2, "d": 1}
    # It ended by itself, no trial left waiting in a bracket (with brackets lost on restore,
    # c and d would wait for finished trials until the time budget ran out).
    scheduler = restored._local_tuner._tune_config.scheduler
    bands = scheduler.saved_state()["bands"]
    assert not [b["live"] for band in bands for b in band if b and b["live"]], bands
