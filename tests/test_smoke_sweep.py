"""Integration: the real command, a real local Ray, real Optuna TPE and ASHA, real peft. The
sweep without data runs the script as a process (the session's, shared with test_report); the
one on the real CoLA slice runs its ``main`` in this process (``run_main``)."""
import json
import re

import pandas as pd
import pytest

from conftest import COLA_SCRIPT, SMOKE_SERIAL, run_main, read_table

# trials.csv is tidy: exactly these columns (the README's data dictionary), the
# hyperparameters named as in the space, no config internals, one time column.
TRIAL_COLUMNS = ["trial_id", "searcher", "scheduler", "search_seed", "status", "failure",
                 "learning_rate", "lora_r", "lora_alpha", "lora_dropout", "batch_size",
                 "weight_decay", "best_val_mcc", "epochs_run", "patience_stopped", "wall_s",
                 "last_val_loss", "last_val_accuracy", "last_val_mcc", "last_val_soft_mcc",
                 "last_val_auc", "last_train_accuracy", "last_train_mcc", "best_val_loss", "best_val_accuracy", "best_val_soft_mcc",
                 "best_val_auc", "last_train_loss", "peak_mem_mb", "train_mem_mb", "trainable_params",
                 "total_params", "seed", "git_commit", "versions"]
EPOCH_COLUMNS = {"trial_id", "epoch", "train_loss", "val_loss", "val_accuracy", "val_mcc",
                 "best_val_mcc", "elapsed_s", "seed", "git_commit", "versions"}


def check_console(out: str, trials, epochs) -> None:
    """The sweep's own lines: one per trial-epoch, one per trial's end, one per retrain job's
    epoch and end; none of Ray's status tables or warnings without -v."""
    lines = out.splitlines()
    per_epoch = [ln for ln in lines if re.match(r"^\[ *[\d hmins]+\] trial \w+ epoch \d+/3: ", ln)]
    assert len(per_epoch) == len(epochs), per_epoch
    ended = [ln for ln in lines if re.match(r"^\[.*\] trial \w+ (completed|stopped by ASHA)", ln)]
    assert len(ended) == len(trials)
    assert sum("stopped by ASHA" in ln for ln in ended) == (trials["status"] == "stopped").sum()
    assert any(re.match(r"^\[.*\] retrain job \w+-seed\d+ completed after 3 epochs", ln)
               for ln in lines)
    for noise in ("== Status ==", "Result logdir", "Token authentication", "Tuner.restore",
                  "A new study created"):
        assert noise not in out, noise
    assert "active compute" in out and "elapsed" in out


def check_experiment(exp, out, num_samples, retrain_rows):
    trials = read_table(exp / "trials.csv")
    epochs = read_table(exp / "epochs.csv")
    assert len(trials) == num_samples
    assert list(trials.columns) == TRIAL_COLUMNS, set(trials.columns) ^ set(TRIAL_COLUMNS)
    assert set(trials["status"]) <= {"completed", "stopped", "failed", "interrupted"}
    assert (trials["status"] == trials["epochs_run"].map(
        lambda e: "completed" if e == 3 else "stopped")).all()
    assert EPOCH_COLUMNS <= set(epochs.columns), EPOCH_COLUMNS - set(epochs.columns)
    assert len(epochs) == trials["epochs_run"].sum()
    assert (trials["status"] == "stopped").sum() >= 1, "ASHA stopped no trial"
    assert trials["epochs_run"].max() == 3
    assert (trials["trainable_params"] > 0).all()
    assert trials["best_val_mcc"].is_monotonic_decreasing  # sorted leaderboard
    # retrain: every (config, seed) reported on dev, in and out of domain apart
    runs = read_table(exp / "retrain_runs.csv")
    summary = read_table(exp / "retrain.csv")
    assert len(runs) == retrain_rows and len(summary) == retrain_rows // 2
    for col in ("dev_accuracy_mean", "dev_mcc_mean", "dev_mcc_sd", "dev_in_mcc_mean",
                "dev_out_mcc_mean"):
        assert col in summary and summary[col].notna().all()
    # numbers only (mean, sd and n apart); "mean ± sd" is the console's and the report's
    assert all(pd.api.types.is_numeric_dtype(summary[c]) for c in summary.columns), summary.dtypes
    assert (summary["n_seeds"] == 2).all()
    check_console(out, trials, epochs)
    for job in runs["job"]:
        adapter = exp / "retrained" / job
        assert (adapter / "adapter_model.safetensors").is_file()
        meta = json.loads((adapter / "meta.json").read_text())
        assert {"config", "seed", "git_commit", "versions"} <= set(meta)
    assert "Leaderboard" in out and "Retrained best configurations" in out
    record = json.loads((exp / "experiment.json").read_text())
    assert record["study"] == "cola_lora" and "versions" in record
    # the disk plan is printed, recorded, and errs high: the whole experiment fits in it
    from search.disk import MB, tree_bytes

    disk = record["disk"]
    assert f"disk: about {disk['need_mb']:,.0f} MB written" in out
    assert tree_bytes(exp) <= disk["need_mb"] * MB, (tree_bytes(exp) / MB, disk)


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


@pytest.mark.slow
@pytest.mark.parametrize("method,size", [("ia3", None), ("dora", "lora_r")])
def test_other_adapter_methods_smoke(method, size, tmp_path, monkeypatch, capsys):
    """IA3 and DoRA: added as a model module, a space and one registry entry each; the same
    command runs them (--method), with their own spaces and parameter counts."""
    from models.registry import get_study

    storage = tmp_path / "runs"
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--method", method, "--num-samples", "2",
                               "--max-epochs", "2", "--retrain-top-k", "1", "--retrain-seeds",
                               "1", "--storage-path", str(storage)], tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = storage / f"cola_{method}"
    record = json.loads((exp / "experiment.json").read_text())
    assert record["study"] == f"cola_{method}" and set(record["space"]) == set(
        get_study(f"cola_{method}").space)
    trials = read_table(exp / "trials.csv")
    assert len(trials) == 2 and (trials["trainable_params"] > 0).all()
    assert ("lora_r" in trials) == (size is not None)
    job = read_table(exp / "retrain_runs.csv")["job"].iloc[0]
    adapter = json.loads((exp / "retrained" / job / "adapter_config.json").read_text())
    assert adapter["peft_type"] == {"ia3": "IA3", "dora": "LORA"}[method]
    assert adapter.get("use_dora", False) == (method == "dora")
