"""--log-to tensorboard,mlflow,wandb: Ray Tune's logger callbacks, checked by reading what
each tracker wrote: MLflow's local SQLite store through MLflow's own client (a run per trial
and per retrain job, params, per-epoch metric history), TensorBoard event files through
TensorBoard's reader, W&B runs written offline."""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from conftest import COLA_SCRIPT, SMOKE_SERIAL, run_cli, run_main


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


@pytest.mark.slow
def test_every_tracker_gets_a_run_per_trial_with_its_epochs(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tmp_path / "runs"
    r = run_cli(COLA_SCRIPT, ["--smoke-test", *SMOKE_SERIAL, "--num-samples", "3",
                              "--max-epochs", "2", "--retrain-top-k", "1", "--retrain-seeds", "2",
                              "--log-to", "tensorboard,mlflow,wandb", "--mlflow-tracking-uri", uri,
                              "--wandb-project", "smoke", "--storage-path", str(runs)],
                tmp_path, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb"),
                WANDB_SILENT="true")
    assert r.returncode == 0, r.stderr[-3000:]
    exp = runs / "cola_lora"
    trials = pd.read_csv(exp / "trials.csv")
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
