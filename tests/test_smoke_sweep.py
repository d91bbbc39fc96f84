"""Integration: the real command, a real local Ray, real Optuna TPE and ASHA, real peft. The
sweep without data runs the script as a process (the session's, shared with test_report); the
one on the real CoLA slice runs its ``main`` in this process (``run_main``)."""
import json

import pandas as pd
import pytest

from conftest import COLA_SCRIPT, SMOKE_SERIAL, run_main

TRIAL_COLUMNS = {"trial_id", "config/learning_rate", "config/lora_r", "config/lora_alpha",
                 "config/lora_dropout", "config/batch_size", "config/weight_decay",
                 "best_val_mcc", "last_val_accuracy", "last_val_mcc", "epochs_run",
                 "stopped_early", "trainable_params", "wall_s", "seed", "git_commit", "versions"}
EPOCH_COLUMNS = {"trial_id", "epoch", "train_loss", "val_loss", "val_accuracy", "val_mcc",
                 "best_val_mcc", "elapsed_s", "seed", "git_commit", "versions"}


def check_experiment(exp, out, num_samples, retrain_rows):
    trials = pd.read_csv(exp / "trials.csv")
    epochs = pd.read_csv(exp / "epochs.csv")
    assert len(trials) == num_samples
    assert TRIAL_COLUMNS <= set(trials.columns), TRIAL_COLUMNS - set(trials.columns)
    assert EPOCH_COLUMNS <= set(epochs.columns), EPOCH_COLUMNS - set(epochs.columns)
    assert len(epochs) == trials["epochs_run"].sum()
    assert trials["stopped_early"].sum() >= 1, "ASHA stopped no trial"
    assert trials["epochs_run"].max() == 3
    assert (trials["trainable_params"] > 0).all()
    assert trials["best_val_mcc"].is_monotonic_decreasing  # sorted leaderboard
    # retrain: every (config, seed) reported on dev, in and out of domain apart
    runs = pd.read_csv(exp / "retrain_runs.csv")
    summary = pd.read_csv(exp / "retrain.csv")
    assert len(runs) == retrain_rows and len(summary) == retrain_rows // 2
    for col in ("dev_accuracy_mean", "dev_mcc_mean", "dev_mcc_sd", "dev_in_mcc_mean",
                "dev_out_mcc_mean"):
        assert col in summary and summary[col].notna().all()
    for job in runs["job"]:
        adapter = exp / "retrained" / job
        assert (adapter / "adapter_model.safetensors").is_file()
        meta = json.loads((adapter / "meta.json").read_text())
        assert {"config", "seed", "git_commit", "versions"} <= set(meta)
    assert "Leaderboard" in out and "Retrained best configurations" in out
    record = json.loads((exp / "experiment.json").read_text())
    assert record["study"] == "cola_lora" and "versions" in record


@pytest.mark.slow
def test_smoke_sweep_without_data(cola_smoke, smoke_storage):
    # `--smoke-test` as the README runs it (one trial at a time): the session's sweep, which
    # test_report also reads
    r = cola_smoke
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "generated acceptability set" in r.stdout
    check_experiment(smoke_storage / "cola_lora", r.stdout, num_samples=6, retrain_rows=4)


@pytest.mark.slow
def test_smoke_sweep_on_real_cola_slice(tmp_path, shared_cola, monkeypatch, capsys):
    # one trial at a time: the same ASHA stops in every run (see conftest.cola_smoke)
    r = run_main(COLA_SCRIPT, ["--smoke-test", *SMOKE_SERIAL, "--data-dir", str(shared_cola),
                               "--name", "real", "--storage-path", str(tmp_path / "runs")],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "NYU CoLA 1.1" in r.stdout and "1043 dev" in r.stdout
    check_experiment(tmp_path / "runs" / "real", r.stdout, num_samples=6, retrain_rows=4)
