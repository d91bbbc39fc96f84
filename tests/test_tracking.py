"""--log-to tensorboard,mlflow,wandb: Ray Tune's logger callbacks, checked by reading what
each tracker wrote: MLflow's local SQLite store through MLflow's own client (a run per trial
and per retrain job, params, per-epoch metric history), TensorBoard event files through
TensorBoard's reader, W&B runs written offline. The W&B API key reaches no file (Ray's logs
included), and Ctrl-C does not wait for W&B runs that will never end."""
from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import COLA_SCRIPT, SMOKE_SERIAL, cli_env, run_cli, run_main, read_table

FAKE_WANDB_KEY = "5f0c1e9a7b3d42c8a6e1f0b9d2c7a4e3b8f1d6c0"  # 40 hex digits, as W&B's


def test_unknown_tracker_exits_2(tmp_path, monkeypatch, capsys):
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--log-to", "tensorboard,comet"], tmp_path,
                 monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started
    assert "--log-to" in r.stderr and "unknown tracker 'comet'" in r.stderr
    assert "tensorboard, mlflow, wandb" in r.stderr


def test_missing_tracker_package_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # how Python marks a module unavailable
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--log-to", "mlflow", "--storage-path",
                               str(tmp_path / "runs")], tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started
    assert "--log-to mlflow: the mlflow package is not installed; pip install -e '.[mlflow]'" \
        in r.stderr
    assert not (tmp_path / "runs").exists()


def test_credentials_in_the_mlflow_uri_exit_2(tmp_path, monkeypatch, capsys):
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--log-to", "mlflow", "--mlflow-tracking-uri",
                               "https://me:S3cr3t-ml@mlflow.internal", "--storage-path",
                               str(tmp_path / "runs")], tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and "MLFLOW_TRACKING_PASSWORD" in r.stderr
    assert "S3cr3t-ml" not in r.stdout + r.stderr and not (tmp_path / "runs").exists()


def test_the_ray_internals_the_wandb_callback_uses_are_there():
    """search.tracking.RAY_WANDB_INTERNALS: a Ray that moves one of them fails here, by name."""
    import ray
    from ray.air.integrations import wandb as ray_wandb

    from search.tracking import RAY_WANDB_INTERNALS

    cb = ray_wandb.WandbLoggerCallback(project="p")
    missing = [f"{where}.{name}" for where, names in RAY_WANDB_INTERNALS.items()
               for name in names
               if not hasattr(cb if where == "WandbLoggerCallback" else ray_wandb, name)]
    assert not missing, (f"Ray {ray.__version__} moved what search/tracking.py's W&B callback "
                         f"relies on: {missing}")
    assert list(inspect.signature(cb._start_logging_actor).parameters) == \
        ["trial", "exclude_results", "wandb_init_kwargs"]
    assert list(inspect.signature(cb._cleanup_logging_actors).parameters) == \
        ["timeout", "kill_on_timeout"]
    assert cb._remote_logger_class is None and cb._trial_logging_futures == {}
    assert cb._logger_actor_cls is ray_wandb._WandbLoggingActor
    assert "kwargs" in inspect.signature(ray_wandb._WandbLoggingActor).parameters
    # Ray builds the actor's class, with the key in its runtime_env, only while this is unset
    assert "if not self._remote_logger_class" in inspect.getsource(cb._start_logging_actor), \
        "Ray changed how WandbLoggerCallback builds its logging actor: check search/tracking.py"


def test_the_logging_actor_takes_the_key_from_its_arguments(tmp_path, monkeypatch):
    """What the callback hands the actor (instead of a logged runtime_env) becomes the actor's
    $WANDB_API_KEY, and is not passed on to wandb.init."""
    from search import tracking

    monkeypatch.setenv("WANDB_API_KEY", "x")
    monkeypatch.delenv("WANDB_API_KEY")  # restored (absent) after the test
    monkeypatch.chdir(tmp_path)  # Ray's actor changes into the trial's folder
    actor = tracking.WandbActor(str(tmp_path), None, [], [], project="p",
                                **{tracking._KEY_ARG: FAKE_WANDB_KEY})
    assert os.environ["WANDB_API_KEY"] == FAKE_WANDB_KEY
    assert actor.kwargs == {"project": "p"}


def test_a_ctrl_c_during_the_wandb_wait_ends_it_and_is_passed_on():
    """The final wait for W&B uploads watches for Ctrl-C (a sweep that ended normally would
    otherwise wait up to 30 min); the signal then reaches whoever handled it before."""
    from search.tracking import _sigint_noted

    before = []
    saved = signal.signal(signal.SIGINT, lambda sig, frame: before.append(sig))
    try:
        with _sigint_noted() as interrupted:
            assert not interrupted.is_set()
            signal.raise_signal(signal.SIGINT)
            assert interrupted.is_set() and before == []
        assert before == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, saved)


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(f) for f in root.rglob("*")
            if f.is_file() and not f.is_symlink() and secret.encode() in f.read_bytes()]


@pytest.mark.slow
def test_every_tracker_gets_a_run_per_trial_with_its_epochs(tmp_path):
    """Also: with $WANDB_API_KEY set, no file of the run holds the key, Ray's session folder
    (its runtime_env_agent.log) included."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tmp_path / "runs"
    ray_dir = Path(tempfile.mkdtemp(prefix="rk"))  # this run's own: short, for Ray's sockets
    try:
        r = run_cli(COLA_SCRIPT, ["--smoke-test", *SMOKE_SERIAL, "--num-samples", "3",
                                  "--max-epochs", "2", "--retrain-top-k", "1",
                                  "--retrain-seeds", "2", "--log-to", "tensorboard,mlflow,wandb",
                                  "--mlflow-tracking-uri", uri, "--wandb-project", "smoke",
                                  "--storage-path", str(runs)],
                    tmp_path, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb"),
                    WANDB_SILENT="true", WANDB_API_KEY=FAKE_WANDB_KEY, RAY_TMPDIR=str(ray_dir))
        assert r.returncode == 0, r.stderr[-3000:]
        assert list(ray_dir.rglob("runtime_env_agent.log")), "Ray's logs are not where expected"
        assert _files_holding(ray_dir, FAKE_WANDB_KEY) == []
        assert _files_holding(tmp_path, FAKE_WANDB_KEY) == []  # storage, W&B runs, MLflow
        assert FAKE_WANDB_KEY not in r.stdout + r.stderr
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    exp = runs / "cola_lora"
    trials = read_table(exp / "trials.csv")
    record = json.loads((exp / "experiment.json").read_text())
    assert record["log_to"] == ["tensorboard", "mlflow", "wandb"]

    client = MlflowClient(tracking_uri=uri)
    sweep = client.get_experiment_by_name("cola_lora")
    mruns = client.search_runs([sweep.experiment_id])
    assert len(mruns) == 3
    by_lr = {round(float(m.data.params["learning_rate"]), 10): m for m in mruns}
    for _, t in trials.iterrows():
        m = by_lr[round(t["learning_rate"], 10)]
        history = client.get_metric_history(m.info.run_id, "val_mcc")
        assert len(history) == t["epochs_run"]  # one value per epoch the trial ran
    retrain = client.get_experiment_by_name("cola_lora/retrain")
    jobs = client.search_runs([retrain.experiment_id])
    assert len(jobs) == 2 and all("dev_mcc" in j.data.metrics for j in jobs)

    for _, t in trials.iterrows():
        acc = EventAccumulator(str(exp / f"trial_{t['trial_id']}"))
        acc.Reload()
        tag = next(s for s in acc.Tags()["scalars"] if s.endswith("/val_mcc"))
        assert len(acc.Scalars(tag)) == t["epochs_run"]

    offline = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert len(offline) == 3 + 2, offline  # a run per trial and per retrain job
    assert all(list(d.glob("*.wandb")) for d in offline)


class _Lines:
    """A process's output, read as it comes (a thread drains the pipe)."""

    def __init__(self, proc):
        self.text = ""
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc):
        for line in proc.stdout:
            self.text += line


@pytest.mark.slow
def test_ctrl_c_with_wandb_does_not_wait_for_runs_that_never_end(tmp_path):
    """Tune stops the trials an interrupt cuts short without ending their W&B runs, and Ray's
    callback then waits 30 min for them: the sweep must exit 130 in seconds, its W&B runs
    closed."""
    wandb_dir = tmp_path / "wandb"
    args = ["--smoke-test", *SMOKE_SERIAL, "--num-samples", "3", "--max-epochs", "10",
            "--scheduler", "none", "--retrain-top-k", "0", "--log-to", "wandb",
            "--storage-path", str(tmp_path / "runs")]
    proc = subprocess.Popen([sys.executable, str(COLA_SCRIPT), *args], cwd=tmp_path, text=True,
                            env=cli_env(tmp_path, WANDB_MODE="offline", WANDB_SILENT="true",
                                        WANDB_DIR=str(wandb_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # a kill reaches the Ray it started too
    out = _Lines(proc)
    try:
        deadline = time.time() + 300
        # the first trial's first epoch is in, and its W&B run has started (9 epochs to go)
        while proc.poll() is None and time.time() < deadline and not (
                re.search(r"trial \w+ epoch 1/10", out.text)
                and list(wandb_dir.rglob("offline-run-*"))):
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        first = sorted(wandb_dir.rglob("offline-run-*"))[0]
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        # Ray's own callback would wait 1,800 s here; this one at most WANDB_INTERRUPTED_WAIT_S
        proc.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        shutil.rmtree(cli_env(tmp_path)["RAY_TMPDIR"], ignore_errors=True)
    assert proc.returncode == 130, out.text[-3000:]
    assert took < 45, f"{took:.0f} s from Ctrl-C to exit"
    assert "Sweep interrupted" in out.text
    trials = read_table(tmp_path / "runs" / "cola_lora" / "trials.csv")
    cut = trials[trials["trial_id"] == first.name.rsplit("-", 1)[1]]
    assert list(cut["status"]) == ["interrupted"], trials
    # its W&B run was finished (wandb.finish), not killed: wandb's own log says so
    assert "finishing run" in (first / "logs" / "debug.log").read_text()
