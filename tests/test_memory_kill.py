"""A trial killed by Ray's memory monitor fails alone and the sweep goes on (Ray 2.60's Tune
would otherwise end ``Tuner.fit()`` with "Caught unexpected exception", see search/oom.py).
A real local Ray whose memory monitor threshold sits 1.5 GiB above what the machine uses
now, and a trial that allocates past it."""
from __future__ import annotations

import pytest

from conftest import ray_tmpdir

GIB = 2 ** 30


@pytest.mark.slow
def test_a_trial_killed_for_memory_fails_alone(tmp_path, monkeypatch):
    import psutil
    import ray
    from ray import tune

    from results import trial_frame
    from search.oom import MEMORY_KILLED, install

    vm = psutil.virtual_memory()
    threshold = (vm.total - vm.available + 1.5 * GIB) / vm.total
    monkeypatch.setenv("RAY_memory_usage_threshold", f"{threshold:.4f}")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "100")
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmpdir(tmp_path)))
    limit = int(min(vm.available - 2 * GIB, 5 * GIB))  # the hog never goes past this

    def trainable(config):
        import time

        import numpy as np

        if config["hog"]:
            chunks = []
            while len(chunks) * 64 * 2 ** 20 < limit:
                chunks.append(np.ones(64 * 2 ** 20 // 8))  # 64 MiB, every page touched
                time.sleep(0.02)
            time.sleep(20)  # still alive: never reports, and the test fails below
            return
        for epoch in range(1, 4):
            time.sleep(1.0)
            tune.report({"epoch": epoch, "best_val_mcc": 0.1 * epoch})

    install()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tune.Tuner(trainable, param_space={"hog": tune.grid_search([True, False, False])},
                   tune_config=tune.TuneConfig(max_concurrent_trials=2,
                                               trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
                   run_config=tune.RunConfig(name="oom", storage_path=str(tmp_path),
                                             failure_config=tune.FailureConfig(max_failures=0))
                   ).fit()  # before the fix: RuntimeError("Caught unexpected exception: ...")
    finally:
        ray.shutdown()
    trials = trial_frame(tmp_path / "oom", metric="best_val_mcc")
    trials["hog"] = trials["hog"].astype(bool)
    # (Ray's monitor may also kill a trial that started while the hog's memory was being
    # freed; a trial killed before it wrote anything has no folder content to list)
    assert len(trials) >= 2, trials
    killed = trials[trials["status"] == "failed"]
    assert trials.loc[trials["hog"], "status"].iloc[0] == "failed", trials
    assert killed["failure"].str.contains(MEMORY_KILLED, regex=False).all(), killed["failure"]
    assert killed["failure"].str.contains("Memory on the node").all()
    # the sweep went on: every trial not killed ran to its end
    rest = trials[trials["status"] != "failed"]
    assert len(rest) >= 1 and (rest["epochs_run"] == 3).all(), trials
