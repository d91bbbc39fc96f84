"""The report on an experiment directory written by hand in Tune's layout (no Ray, fast):
12 trials, enough for range advice and importances; a retrain with per-epoch curves; the
tidy trial table; a summarization comparison table with its charts."""
import json

import numpy as np
import pandas as pd
from PIL import Image

from results import trial_frame
from results.report import build_report

SPACE = {"learning_rate": "log-uniform[0.0001, 0.01]", "lora_r": "{4, 8, 16}",
         "lora_dropout": "uniform[0, 0.3]"}


def _trial(exp, tid, lr, r, drop, epochs, max_epochs=3, t0=1000.0):
    d = exp / f"trial_{tid}"
    d.mkdir(parents=True)
    config = {"learning_rate": lr, "lora_r": r, "lora_dropout": drop, "max_epochs": max_epochs,
              "model": "/somewhere/model", "num_threads": 1, "seed": 0}
    (d / "params.json").write_text(json.dumps(config))
    rows, best = [], 0.0
    for e in range(1, epochs + 1):
        # better with a higher learning rate: the best trial sits at the upper edge
        mcc = float(np.log10(lr) + 4) / 2 * e / max_epochs
        best = max(best, mcc)
        rows.append({"trial_id": tid, "epoch": e, "val_mcc": mcc, "best_val_mcc": best,
                     "val_accuracy": 0.7 + mcc / 10, "val_loss": 0.6 - mcc / 10,
                     "train_loss": 0.6 - mcc / 8, "train_accuracy": 0.7, "train_mcc": mcc,
                     "peak_mem_mb": 900.0, "max_peak_mem_mb": 900.0, "train_mem_mb": 50.0,
                     "max_train_mem_mb": 50.0, "elapsed_s": 2.0 * e, "train_s": 1.5,
                     "epoch_s": 2.0, "mean_train_s": 1.5, "trainable_params": 1000 * r,
                     "total_params": 10 ** 6, "seed": 0, "git_commit": "abc", "versions": "v",
                     "timestamp": t0 + 2 * e, "time_total_s": 2.0 * e, "time_this_iter_s": 2.0,
                     "training_iteration": e, "last_epoch": e == max_epochs, "complete": True,
                     "node_id": "n"})
    (d / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _experiment(tmp_path):
    exp = tmp_path / "cola_lora"
    exp.mkdir()
    lrs = np.geomspace(1e-4, 1e-2, 12)
    for i, lr in enumerate(lrs):
        _trial(exp, f"t{i:02d}", float(lr), (4, 8, 16)[i % 3], 0.05 + 0.02 * (i * 5 % 12),
               epochs=3 if i % 2 else 1, t0=1000.0 + 3 * i)
    (exp / "experiment.json").write_text(json.dumps({
        "study": "cola_lora", "metric": "best_val_mcc", "mode": "max", "space": SPACE,
        "max_epochs": 3, "grace_period": 1, "reduction_factor": 2, "scheduler": "asha",
        "report_split": "GLUE dev", "retrain_weights": "the last epoch's weights",
        "majority_baseline": {"val_accuracy": 0.7, "dev_accuracy": 0.691},
        "command": "search/cola_lora.py ...", "git_commit": "abc"}))
    (exp / "experiment_state-x.json").write_text("{}")
    # a retrain of the best configuration, 2 seeds x 3 epochs
    for seed in (0, 1):
        d = exp / "retrain" / f"trial_r{seed}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"job": {"_job": f"k-seed{seed}", "_rank": 1,
                                                           "seed": seed}}))
        (d / "result.json").write_text("\n".join(json.dumps(
            {"epoch": e, "train_loss": 0.6 - 0.05 * e, "dev_loss": 0.62 - 0.03 * e,
             "train_accuracy": 0.7 + 0.02 * e + 0.01 * seed, "dev_accuracy": 0.7 + 0.01 * e,
             "train_mcc": 0.1 * e, "dev_mcc": 0.08 * e + 0.01 * seed}) for e in (1, 2, 3)))
    pd.DataFrame([{"rank": 1, "n_seeds": 2, "learning_rate": 0.01, "lora_r": 8,
                   "lora_dropout": 0.1, "dev_accuracy_mean": 0.735, "dev_accuracy_sd": 0.007,
                   "dev_mcc_mean": 0.245, "dev_mcc_sd": 0.007}]).to_csv(exp / "retrain.csv",
                                                                         index=False)
    return exp


def test_tidy_trial_frame_without_ray(tmp_path):
    exp = _experiment(tmp_path)
    t = trial_frame(exp, metric="best_val_mcc")
    assert list(t.columns[:5]) == ["trial_id", "status", "failure", "learning_rate", "lora_r"]
    assert not any(c.startswith("config/") for c in t.columns)
    assert "model" not in t and "num_threads" not in t  # internals stay in experiment.json
    assert set(t["status"]) == {"completed", "stopped"}
    assert [c for c in t.columns if c.endswith("_s")] == ["wall_s"]
    assert (t["train_mem_mb"] == 50).all() and t["best_val_mcc"].is_monotonic_decreasing


def test_report_advice_importance_curves_and_tables(tmp_path):
    exp = _experiment(tmp_path)
    out = tmp_path / "rep"
    path, problems = build_report([exp], out)
    md = path.read_text()
    assert "From n = 12 trials:" in md
    assert "**learning_rate**: the best trial sits at the upper edge" in md
    assert "**lora_dropout**" not in md  # the best trial's dropout is mid-range
    imp = md.split("### Importance")[1].split("### Retrain")[0]
    assert "fANOVA importance over 12 trials" in imp and "learning_rate" in imp
    retrain = md.split("### Retrain")[1]
    assert "0.7350 ± 0.0070" in retrain and "| majority class |" in retrain and "0.6910" in retrain
    assert "reported on GLUE dev" in retrain
    assert "12 trials (6 ran to the end, 6 stopped by ASHA)" in md
    for fig in ("learning_curves", "hyperparameters", "parallel_coordinates", "importance",
                "retrain_curves"):
        png = next(out.glob(f"*_{fig}.png"))
        img = Image.open(png).convert("L")
        assert img.size[0] > 300 and img.getextrema()[1] - img.getextrema()[0] > 100, fig


def test_comparison_table_and_charts(tmp_path):
    from results.comparison import comparison_charts

    table = pd.DataFrame({"method": ["prompt", "lora"], "n_seeds": [1, 1],
                          "test_loss_mean": [5.48, 5.22], "test_loss_sd": [np.nan, np.nan],
                          "test_rouge1_mean": [0.06, 0.07], "test_rouge1_sd": [np.nan, np.nan],
                          "test_rouge2_mean": [0.0, 0.01], "test_rouge2_sd": [np.nan, np.nan],
                          "test_rougeL_mean": [0.06, 0.07], "test_rougeL_sd": [np.nan, np.nan]})
    names = comparison_charts(table, tmp_path, about=", 8 articles")
    assert names == ["comparison_rouge.png", "comparison_test_loss.png"]
