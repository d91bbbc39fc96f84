"""Interrupt a real sweep after some trials finish, then --resume: no finished trial reruns,
the total stays --num-samples, and a rerun after the retrain skips finished retrains."""
import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import COLA_SCRIPT, cli_env, ray_tmpdir, run_cli


def finished_trials(exp, max_epochs):
    """{trial dir: result.json text} of trials that checkpointed their last epoch (checkpoints
    are written as each epoch is reported; result.json may be flushed later)."""
    return {d.name: (d / "result.json").read_text() if (d / "result.json").is_file() else ""
            for d in exp.glob("trial_*") if (d / f"checkpoint_{max_epochs - 1:06d}").is_dir()}


@pytest.mark.slow
def test_interrupt_then_resume(tmp_path, shared_cola):
    storage = tmp_path / "runs"
    exp = storage / "resume"
    args = ["--smoke-test", "--data-dir", str(shared_cola), "--max-train-samples", "2000",
            "--num-samples", "8", "--max-epochs", "3", "--retrain-top-k", "1",
            "--retrain-seeds", "1", "--name", "resume", "--storage-path", str(storage)]
    proc = subprocess.Popen([sys.executable, str(COLA_SCRIPT), *args], cwd=tmp_path,
                            env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 400
        while len(finished_trials(exp, 3)) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "sweep ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert "--resume" in out
    before = finished_trials(exp, 3)
    assert 2 <= len(before) < 8
    assert all(before.values())  # the graceful stop flushed every finished trial's results
    assert not (exp / "retrain.csv").exists()

    r = run_cli(COLA_SCRIPT, args + ["--resume"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 8 and len(list(exp.glob("trial_*"))) == 8
    after = finished_trials(exp, 3)
    for name, text in before.items():
        assert after[name] == text, f"finished trial {name} was rerun"
    assert len(pd.read_csv(exp / "retrain_runs.csv")) == 1

    # Rerunning after the retrain finished skips it.
    r = run_cli(COLA_SCRIPT, args + ["--resume"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 already done, 0 to run" in r.stdout
    assert len(pd.read_csv(exp / "retrain_runs.csv")) == 1
    shutil_rm = ray_tmpdir(tmp_path)
    assert not shutil_rm.exists()
    assert json.loads((exp / "experiment.json").read_text())["num_samples"] == 8
