"""Interrupt a real sweep after some trials finish, then --resume: no finished trial reruns,
the total stays --num-samples, and a rerun after the retrain skips finished retrains."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import COLA_SCRIPT, SMOKE_SERIAL, cli_env, ray_tmpdir, run_main, read_table
from search.sweep import trial_statuses


def started(exp):
    """Trial folders (Tune makes one as each trial starts)."""
    return list(exp.glob("trial_*"))


@pytest.mark.slow
def test_interrupt_then_resume(tmp_path, shared_cola, monkeypatch, capsys):
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
        # Two trials at a time: once a fourth trial folder exists, at least two trials have
        # ended (run to the end or stopped by ASHA, which on a continuous metric stops most).
        while len(started(exp)) < 4 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "sweep ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert "--resume" in out
    assert "Tuner.restore" not in out  # Ray's own hint contradicts --resume; shown only with -v
    # Finished = what Tune recorded as TERMINATED (a trial may have written its last checkpoint
    # just before the interrupt without the driver having processed it: that one resumes).
    statuses = trial_statuses(exp)
    before = {f"trial_{tid}": (exp / f"trial_{tid}" / "result.json").read_text()
              for tid, status in statuses.items() if status == "TERMINATED"}
    assert 1 <= len(before) < 8, statuses
    assert not (exp / "retrain.csv").exists()
    # the trials the interrupt cut short say so; none is "stopped early" by the scheduler
    cut = read_table(exp / "trials.csv")
    ended = [t for t, s in statuses.items() if s in ("TERMINATED", "ERROR")]
    unfinished = cut[~cut["trial_id"].isin(ended)]
    assert len(unfinished) >= 1 and set(unfinished["status"]) == {"interrupted"}, cut
    assert not (unfinished["status"] == "stopped").any()
    assert "stopped early" not in out.split("Sweep interrupted")[-1]
    # the count printed is the trials that ended, not those the interrupt cut short
    said = int(re.search(r"Sweep interrupted after (\d+) finished trials", out)[1])
    assert said == int(cut["status"].isin(["completed", "stopped"]).sum()) == len(before), out

    # The interrupted driver was a real process (SIGINT); the resumes run in this process
    # (run_main), as the script would run them.
    r = run_main(COLA_SCRIPT, args + ["--resume"], tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the resumed sweep's own progress lines (its callback comes back from Tune's pickle)
    assert re.search(r"\] trial \w+ epoch \d/3: ", r.stdout) and "active compute" in r.stdout
    trials = read_table(exp / "trials.csv")
    assert len(trials) == 8 and len(list(exp.glob("trial_*"))) == 8
    for name, text in before.items():
        assert (exp / name / "result.json").read_text() == text, f"finished trial {name} was rerun"
    epochs = read_table(exp / "epochs.csv")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert len(read_table(exp / "retrain_runs.csv")) == 1

    # Rerunning after the retrain finished skips it.
    r = run_main(COLA_SCRIPT, args + ["--resume"], tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 already done, 0 to run" in r.stdout
    assert len(read_table(exp / "retrain_runs.csv")) == 1
    shutil_rm = ray_tmpdir(tmp_path)
    assert not shutil_rm.exists()
    assert json.loads((exp / "experiment.json").read_text())["num_samples"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("change, needle", [
    (["--num-samples", "8"], "--num-samples 8: the experiment 'cola_lora' was started with "
                             "num_samples 6"),
    (["--max-epochs", "5"], "--max-epochs 5: the experiment 'cola_lora' was started with "
                            "max_epochs 3"),
    (["--seed", "3"], "--seed 3: the experiment 'cola_lora' was started with search_seed 0"),
    (["--space", "lora_r=4,8"], "--space"),
    (["--max-train-samples", "300"], "--max-train-samples"),
])
def test_resume_with_a_changed_study_flag_exits_2(change, needle, cola_smoke, smoke_storage,
                                                  tmp_path, monkeypatch, capsys):
    """A finished sweep resumed with a flag that defines the study changed: exit 2 naming the
    flag and the recorded value (before: the old sweep reloaded, "interrupted", exit 130, and
    the advice to resume looped)."""
    import shutil

    assert cola_smoke.returncode == 0
    storage = tmp_path / "runs"
    shutil.copytree(smoke_storage / "cola_lora", storage / "cola_lora")
    before = sorted(p.name for p in (storage / "cola_lora").rglob("*"))
    args = ["--smoke-test", *SMOKE_SERIAL, "--storage-path", str(storage), "--resume", *change]
    r = run_main(COLA_SCRIPT, args, tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started, r.stdout[-2000:] + r.stderr[-2000:]
    assert needle in r.stderr and "--resume continues it as it was started" in r.stderr, r.stderr
    assert "interrupted" not in r.stdout + r.stderr
    assert sorted(p.name for p in (storage / "cola_lora").rglob("*")) == before


@pytest.mark.slow
def test_a_finished_sweep_run_again_without_resume_says_pass_resume(cola_smoke, smoke_storage,
                                                                    tmp_path, monkeypatch, capsys):
    import shutil

    assert cola_smoke.returncode == 0
    storage = tmp_path / "runs"
    shutil.copytree(smoke_storage / "cola_lora", storage / "cola_lora")
    r = run_main(COLA_SCRIPT, ["--smoke-test", *SMOKE_SERIAL, "--storage-path", str(storage)],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started
    assert "already exists; pass --resume to continue it" in r.stderr, r.stderr
