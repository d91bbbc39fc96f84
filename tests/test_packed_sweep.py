"""``--pack K`` on a real local Ray (search/packing.py): the smoke sweep's trials train three at
a time in one engine, each still its own Tune trial (its own rows, checkpoints and ASHA
decision); and an engine killed mid-sweep is started again, its trials resume from their
checkpoints and the sweep ends as usual."""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import COLA_SCRIPT, run_cli, read_table

pytestmark = pytest.mark.slow


def _packed_sweep(tmp_path: Path, on_start=None):
    storage = tmp_path / "runs"
    args = ["--smoke-test", "--pack", "3", "--storage-path", str(storage),
            "--retrain-top-k", "1", "--retrain-seeds", "1"]
    watcher = None
    if on_start is not None:
        watcher = threading.Thread(target=on_start, args=(storage,), daemon=True)
        watcher.start()
    r = run_cli(COLA_SCRIPT, args, tmp_path, timeout=600)
    if watcher is not None:
        watcher.join(timeout=5)
    return r, storage / "cola_lora"


def test_packed_sweep_runs_each_configuration_as_its_own_trial(tmp_path):
    r, exp = _packed_sweep(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "packed: up to 3 trials at once in one engine" in out
    assert "Traceback" not in r.stderr
    trials = read_table(exp / "trials.csv")
    epochs = read_table(exp / "epochs.csv")
    assert len(trials) == 6  # the smoke test's trials, each its own trial
    assert set(epochs["packed_slots"]) == {3}
    # Each trial counts its own adapter (its rank), not the engine's.
    for _, t in trials.iterrows():
        rows = epochs[epochs["trial_id"] == t["trial_id"]]
        assert rows["trainable_params"].nunique() == 1
    by_rank = epochs.groupby("lora_r")["trainable_params"].first() if "lora_r" in epochs else None
    if by_rank is not None and len(by_rank) > 1:
        assert by_rank.is_monotonic_increasing
    # The scheduler still decides per trial: some trials ran fewer epochs than others.
    runs = epochs.groupby("trial_id")["epoch"].max()
    assert runs.min() < runs.max() == 3
    record = json.loads((exp / "experiment.json").read_text())
    assert record["pack"] == 3 and record["memory"]["packed"]["slots"] == 3
    # The retrain ran unpacked (its own processes), and reported.
    assert (exp / "retrain.csv").exists()


def _kill_engine_after_first_checkpoint(storage: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if list(storage.glob("cola_lora/trial_*/checkpoint_*")):
            subprocess.run(["pkill", "-9", "-f", "ray::EngineHost"], check=False)
            return
        time.sleep(0.05)


def test_a_killed_engine_is_started_again_and_its_trials_resume(tmp_path):
    r, exp = _packed_sweep(tmp_path, on_start=_kill_engine_after_first_checkpoint)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the packed engine died; starting it again" in r.stdout
    trials = read_table(exp / "trials.csv")
    assert len(trials) == 6
    assert (trials["status"] != "failed").all(), trials[["trial_id", "status"]]
    epochs = read_table(exp / "epochs.csv")
    # Every trial's epochs are 1..n without a gap or a repeat: those cut off by the kill went
    # on from their last checkpoint.
    for tid, rows in epochs.groupby("trial_id"):
        assert list(rows["epoch"]) == list(range(1, len(rows) + 1)), tid


def test_an_interrupted_packed_sweep_resumes(tmp_path):
    """Ctrl-C once a trial has its second checkpoint, then the same command plus --resume:
    the trials cut short go on from their checkpoints in the engine the resumed sweep starts
    (each trial's epochs 1..n once), and every trial ends."""
    import os
    import signal
    import sys

    from conftest import cli_env

    storage = tmp_path / "runs"
    args = ["--smoke-test", "--pack", "3", "--storage-path", str(storage),
            "--retrain-top-k", "1", "--retrain-seeds", "1"]
    first = subprocess.Popen([sys.executable, str(COLA_SCRIPT), *args], cwd=tmp_path,
                             env=cli_env(tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(storage.glob("cola_lora/trial_*/checkpoint_000001")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGINT)
    out, err = first.communicate(timeout=300)
    assert "--resume" in out + err
    r = run_cli(COLA_SCRIPT, [*args, "--resume"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    exp = storage / "cola_lora"
    trials = read_table(exp / "trials.csv")
    assert len(trials) == 6 and set(trials["status"]) <= {"completed", "stopped"}
    epochs = read_table(exp / "epochs.csv")
    for tid, rows in epochs.groupby("trial_id"):
        assert list(rows["epoch"]) == list(range(1, len(rows) + 1)), tid


def test_pack_auto_packs_the_knee_of_the_probed_curve(tmp_path):
    storage = tmp_path / "runs"
    r = run_cli(COLA_SCRIPT, ["--smoke-test", "--pack", "auto", "--storage-path", str(storage),
                              "--num-samples", "3", "--max-epochs", "1", "--retrain-top-k", "0"],
                tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    record = json.loads((storage / "cola_lora" / "experiment.json").read_text())
    probe = record["memory"]["packed"]["probe"]
    assert [p["k"] for p in probe][:2] == [1, 2]  # K up to the sweep's 3 trials
    assert max(p["k"] for p in probe) <= 3
    from models.packed.probe import knee

    k = knee(probe)
    for p in probe:
        assert f"probe: K={p['k']}: {p['samples_per_s']:.1f} samples/s" in r.stdout
    epochs = read_table(storage / "cola_lora" / "epochs.csv")
    assert record["pack"] == k
    if k > 1:
        assert record["concurrency"] == k
        assert f"--pack auto: packing {k} " in r.stdout
        assert set(epochs["packed_slots"]) == {k}
    else:  # a flat curve: unpacked trials, one process each
        assert "the trials run unpacked" in r.stdout
        assert "packed_slots" not in epochs or epochs["packed_slots"].isna().all()


@pytest.mark.parametrize("method", ["ia3", "dora"])
def test_ia3_and_dora_sweeps_pack(tmp_path, method):
    storage = tmp_path / "runs"
    r = run_cli(COLA_SCRIPT, ["--smoke-test", "--method", method, "--pack", "3",
                              "--storage-path", str(storage), "--num-samples", "3",
                              "--max-epochs", "1", "--retrain-top-k", "0"],
                tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "packed: up to 3 trials at once in one engine" in r.stdout
    assert "cannot be packed" not in r.stdout
    exp = storage / f"cola_{method}"
    epochs = read_table(exp / "epochs.csv")
    trials = read_table(exp / "trials.csv")
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}
    assert set(epochs["packed_slots"]) == {3}
    # Each trial counts its own adapter as the solo peft model does (the plan's counts).
    line = r.stdout.split("trainable params:")[1].splitlines()[0]
    planned = {int(n.replace(",", "")) for n in re.findall(r"([\d,]+) of [\d,]+", line)}
    assert set(epochs["trainable_params"]) <= planned
