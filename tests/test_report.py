"""Reports built from real tiny sweeps run here (real Ray, Optuna, ASHA): every section, real
figures, importance, Optuna's SQLite study, several experiments side by side, and damaged
directories (described, or exit 1 with --strict)."""
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, read_table

SECTIONS = ["## cola_lora", "### Header", "### Leaderboard", "### Learning curves",
            "### Hyperparameters", "### Parallel coordinates", "### Importance", "### Retrain"]


@pytest.fixture(scope="module")
def sweeps(smoke_storage, cola_smoke, cnndm_prompt_smoke):
    """A CoLA LoRA smoke sweep (6 trials, 2 configurations retrained with 2 seeds) and a
    summarization (prompt tuning, 3 trials) smoke sweep: the session's, shared with
    test_smoke_sweep and test_summarize_sweep (conftest)."""
    for r in (cola_smoke, cnndm_prompt_smoke):
        assert r.returncode == 0, r.stderr[-2000:]
    return smoke_storage


def report(args, cwd):
    """``python -m results report ARGS`` as a real process."""
    return subprocess.run([sys.executable, "-m", "results", "report", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def report_here(args, capsys):
    """The same command's ``main`` in this process (pandas, matplotlib and Optuna are imported
    once, not once per report): exit code and captured output, as ``report`` gives them. The
    real process runs in test_not_an_experiment here and in test_cloud_storage."""
    from results.__main__ import main

    capsys.readouterr()
    try:
        code = main(["report", *map(str, args)])
    except SystemExit as e:  # argparse errors
        code = e.code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def non_trivial(png):
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    return img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 10 and (img < 128).mean() > 0.005


@pytest.mark.slow
def test_report_of_one_sweep(sweeps, tmp_path, capsys):
    exp = sweeps / "cola_lora"
    out = tmp_path / "rep"
    r = report_here([exp, "--out", out, "--strict"], capsys)
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text()
    for s in SECTIONS:
        assert s in md, s
    record = json.loads((exp / "experiment.json").read_text())
    assert record["command"] in md and record["git_commit"] in md
    assert "6 trials" in md and "trial-epochs" in md
    assert "majority class (baseline)" in md
    pngs = sorted(out.glob("*.png"))
    for fig in ("learning_curves", "hyperparameters", "parallel_coordinates", "retrain_curves"):
        assert any(p.name.endswith(f"_{fig}.png") for p in pngs), fig
    # 6 trials: too few for range advice or importances, and the report says so
    assert "No advice on the ranges: 6 trials with a value" in md
    assert "widen the space" not in md
    assert "Importances left out: 6 trials with a value" in md
    assert not any(p.name.endswith("_importance.png") for p in pngs)
    # lora_r is searched, so whether the trials differ in size depends on what TPE suggests
    # (two CI runs of the same sweep code, a day apart, got one size and two): check the
    # branch the trials call for, and the front against one computed here from trials.csv
    assert "### Trade-offs (Pareto)" in md
    trials = read_table(exp / "trials.csv")
    metric = record["metric"]
    assert record["mode"] == "max"
    if trials["trainable_params"].nunique() > 1:
        size, score = trials["trainable_params"], trials[metric]
        front = {r.trial_id for r in trials.itertuples()
                 if not ((size <= r.trainable_params) & (score >= getattr(r, metric))
                         & ((size < r.trainable_params) | (score > getattr(r, metric)))).any()}
        line = next(x for x in md.splitlines() if x.startswith("Non-dominated trials ("))
        assert line.startswith(f"Non-dominated trials ({len(front)} of 6)")
        assert {t for t in trials["trial_id"] if f"`{t}`" in line} == front
        assert any(p.name.endswith("_pareto_trials.png") for p in pngs)
        assert "no trade-off to show" not in md
    else:
        assert "no trade-off to show" in md
        assert not any(p.name.endswith("_pareto_trials.png") for p in pngs)
    for p in pngs:
        assert non_trivial(p), p
        assert f"]({p.name})" in md  # every figure is linked
    retrain = md.split("### Retrain")[1]
    assert "± " in retrain  # mean ± sd per configuration
    # the split in words (the smoke set is not GLUE dev) and the majority class beside it
    assert "the generated dev set" in retrain and "| majority class |" in retrain


@pytest.mark.slow
def test_optuna_study_persists_in_sqlite(sweeps):
    import optuna

    exp = sweeps / "cola_lora"
    record = json.loads((exp / "experiment.json").read_text())
    assert (exp / "optuna.db").is_file()
    study = optuna.load_study(study_name=record["optuna_study"], storage=record["optuna_storage"])
    trials = read_table(exp / "trials.csv")
    assert len(study.trials) == len(trials) == 6
    # Every trial ended in Optuna as it ended in Tune (states in detail:
    # test_search_choice.test_stopped_trials_are_pruned_in_optuna).
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
               for t in study.trials)


@pytest.mark.slow
def test_side_by_side(sweeps, tmp_path, capsys):
    out = tmp_path / "both"
    r = report_here([sweeps / "cola_lora", sweeps / "cnndm-prompt", "--out", out], capsys)
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text()
    side = md.split("## Side by side")[1].split("## cola_lora")[0]
    assert "| cola_lora | cola_lora |" in side and "| cnndm-prompt | cnndm_prompt |" in side
    assert "retrain dev_mcc" in side and "retrain test_loss" in side
    prompt = md.split("## cnndm-prompt")[1]
    assert "best_val_loss" in prompt and "majority class" not in prompt
    assert "num_virtual_tokens" in prompt


@pytest.mark.slow
def test_damaged_directory(sweeps, tmp_path, capsys):
    exp = tmp_path / "cola_lora"
    shutil.copytree(sweeps / "cola_lora", exp, ignore=shutil.ignore_patterns("report"))
    trial_dirs = sorted(d for d in exp.iterdir() if d.name.startswith("trial_"))
    # 1. a truncated last line in one trial's result file
    res = trial_dirs[0] / "result.json"
    lines = res.read_text().splitlines()
    res.write_text("\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]) + "\n")
    # 2. a trial with no results
    (trial_dirs[1] / "result.json").write_text("")
    # 3. no experiment-state file
    for f in exp.glob("experiment_state-*.json"):
        f.unlink()
    out = tmp_path / "rep"
    r = report_here([exp, "--out", out], capsys)
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text()
    assert "unreadable line dropped" in md and f"{res}:{len(lines)}" in md
    assert f"trial {trial_dirs[1].name.removeprefix('trial_')}: no results" in md
    assert "no experiment-state file" in md
    for s in SECTIONS:
        assert s in md
    epochs_before = read_table(sweeps / "cola_lora" / "epochs.csv")
    n_before = (epochs_before["trial_id"] == trial_dirs[0].name.removeprefix("trial_")).sum()
    from results.experiment import load_experiment

    e = load_experiment(exp)
    assert (e.epochs["trial_id"] == trial_dirs[0].name.removeprefix("trial_")).sum() == n_before - 1
    strict = report_here([exp, "--out", tmp_path / "rep2", "--strict"], capsys)
    assert strict.returncode == 1 and "problem(s) found" in strict.stderr


def test_not_an_experiment(tmp_path):
    r = report([tmp_path], tmp_path)
    assert r.returncode == 2 and "not an experiment directory" in r.stderr
    r = report([tmp_path / "missing"], tmp_path)
    assert r.returncode == 2 and "no such directory" in r.stderr


def test_edge_flags_and_rungs():
    from results.plots import asha_rungs, edge_flags
    from spaces.dims import Choice, LogUniform, Uniform

    space = {"learning_rate": LogUniform(1e-5, 1e-1), "dropout": Uniform(0.0, 0.3),
             "r": Choice((2, 4, 8, 16)), "mode": Choice(("a", "b", "c"))}
    trials = pd.DataFrame({"learning_rate": [9e-2, 1e-3], "dropout": [0.15, 0.0],
                           "r": [16, 2], "mode": ["a", "c"], "m": [0.9, 0.1]})
    assert edge_flags(trials, space, metric="m", mode="max") == {"learning_rate": "upper",
                                                                  "r": "upper"}
    # dropout's lower edge is 0, where it cannot go further: no advice to widen it there
    assert edge_flags(trials, space, metric="m", mode="min") == {"r": "lower"}
    assert asha_rungs(9, 1, 3) == [1, 3] and asha_rungs(3, 1, 2) == [1, 2]


def test_advice_only_with_evidence():
    """No 'widen the space' from a handful of trials, at a bound that cannot move
    (kd_fraction's 1.0), or from a best value tied by trials elsewhere; no importances from
    fewer trials than the stated minimum, and the report says why."""
    from results.advice import (MIN_EDGE_TRIALS, MIN_IMPORTANCE_TRIALS, edge_advice,
                                importance_evidence)
    from spaces.dims import LogUniform, Uniform

    space = {"learning_rate": LogUniform(1e-4, 1e-2), "kd_fraction": Uniform(0.0, 1.0)}
    n = MIN_EDGE_TRIALS
    lrs = [1e-2] + [10 ** (-4 + 2 * i / n) for i in range(1, n)]
    trials = pd.DataFrame({"learning_rate": lrs, "kd_fraction": [1.0] + [0.5] * (n - 1),
                           "m": [0.9] + [0.1 * i / n for i in range(1, n)]})
    flags, note = edge_advice(trials, space, metric="m", mode="max")
    assert flags == {"learning_rate": "upper"} and f"n = {n}" in note  # kd_fraction: at 1.0
    few, note = edge_advice(trials.head(4), space, metric="m", mode="max")
    assert few == {} and "4 trials" in note and str(MIN_EDGE_TRIALS) in note
    tied = trials.assign(m=[0.0] * n)  # every trial at MCC 0: the 'best' is a tie
    assert edge_advice(tied, space, metric="m", mode="max")[0] == {}
    assert str(MIN_IMPORTANCE_TRIALS) in importance_evidence(trials, "m")
    many = pd.concat([trials] * 2, ignore_index=True)
    assert importance_evidence(many, "m") is None


def test_importance_of_equal_scores_is_empty_not_an_error():
    """Every trial scoring the same (a smoke sweep whose MCC is 0 everywhere): fANOVA has no
    variance to explain; the report says so instead of failing."""
    import pandas as pd

    from results.importance import param_importance
    from spaces.dims import LogUniform, Uniform

    space = {"learning_rate": LogUniform(1e-5, 1e-2), "lora_dropout": Uniform(0.0, 0.3)}
    trials = pd.DataFrame({"learning_rate": [1e-4, 1e-3, 3e-3],
                           "lora_dropout": [0.1, 0.2, 0.05],
                           "best_val_mcc": [0.0, 0.0, 0.0]})
    assert param_importance(trials, space, metric="best_val_mcc", mode="max").empty
    trials.loc[0, "best_val_mcc"] = 0.3
    imp = param_importance(trials, space, metric="best_val_mcc", mode="max")
    assert set(imp["param"]) == set(space) and abs(imp["importance"].sum() - 1) < 1e-6


def test_non_dominated_marks_the_pareto_front():
    import pandas as pd

    from results.pareto import non_dominated

    d = pd.DataFrame({"mcc": [0.5, 0.4, 0.6, 0.5, None], "params": [10, 5, 100, 20, 1]})
    front = non_dominated(d, {"mcc": "max", "params": "min"})
    # (0.5, 10) and (0.4, 5) and (0.6, 100) trade off; (0.5, 20) is dominated by (0.5, 10);
    # a row without a value is never on the front
    assert list(front) == [True, True, True, False, False]


def test_pareto_figure_marks_the_front(tmp_path):
    import pandas as pd

    from results.pareto import pareto_figure

    d = pd.DataFrame({"trial": list("abcdef"), "val_mcc": [0.1, 0.3, 0.35, 0.2, 0.32, 0.05],
                      "trainable_params": [1e5, 2e5, 8e5, 4e5, 4e5, 5e4]})
    fig = pareto_figure(d, x="trainable_params", y="val_mcc", label="trial", xlog=True,
                        modes={"trainable_params": "min", "val_mcc": "max"}, title="t")
    assert fig.axes[0].get_title() == "t (n = 6)"
    fig.savefig(tmp_path / "p.png")
    assert non_trivial(tmp_path / "p.png")
