"""--searcher, --scheduler, --metric and --warm-start on the tiny model: every searcher and every
scheduler runs a real sweep (real Ray, real Optuna samplers, TuneBOHB, Tune's schedulers), and
what Optuna recorded agrees with what Tune did; warm starts evaluate the earlier experiment's
best configurations first; bad choices exit 2 before anything starts."""
import json

import optuna
import pytest

from conftest import COLA_SCRIPT, SMOKE_SERIAL, run_main, read_table
from search.retrain import retrain_threads

QUICK = ["--smoke-test", "--num-samples", "3", "--max-epochs", "2", "--retrain-top-k", "0"]

# Each searcher once, each scheduler at least once (bohb brings its own HyperBandForBOHB).
PAIRS = [("tpe", "asha"), ("gp", "median"), ("random", "none"), ("qmc", "hyperband"),
         ("cmaes", "asha"), ("bohb", "hyperband")]


def optuna_trials(exp):
    record = json.loads((exp / "experiment.json").read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=record["optuna_study"],
                             storage=record["optuna_storage"]).trials


@pytest.mark.slow
@pytest.mark.parametrize("searcher,scheduler", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_each_searcher_and_scheduler(searcher, scheduler, tmp_path, monkeypatch, capsys):
    storage = tmp_path / "runs"
    r = run_main(COLA_SCRIPT, [*QUICK, "--searcher", searcher, "--scheduler", scheduler,
                               "--storage-path", str(storage)], tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = storage / "cola_lora"
    record = json.loads((exp / "experiment.json").read_text())
    assert (record["searcher"], record["scheduler"], record["search_seed"]) == \
        (searcher, scheduler, 0)
    assert record["search_metric"] == "best_val_auc"
    trials = read_table(exp / "trials.csv")
    assert len(trials) == 3
    assert (trials["searcher"] == searcher).all() and (trials["scheduler"] == scheduler).all()
    assert "best_val_auc" in read_table(exp / "epochs.csv")
    if scheduler == "none":
        assert (trials["epochs_run"] == 2).all() and not (trials["status"] == "stopped").any()
    if searcher == "bohb":
        assert "BOHB" in r.stdout
        return
    # What Optuna recorded matches what Tune did: one trial per Tune trial, none left
    # running, stopped trials PRUNED, one intermediate value per epoch run.
    ot = optuna_trials(exp)
    states = [t.state for t in ot]
    assert len(ot) == 3 and set(states) <= {optuna.trial.TrialState.COMPLETE,
                                            optuna.trial.TrialState.PRUNED}, states
    # Every PRUNED trial is one Tune stopped early. (Not always the converse with two trials
    # side by side: Tune can hand the searcher a stopped trial's next epoch, already in flight
    # when the stop was decided, that it never logs; the serial sweep below checks both ways.)
    pruned = sorted(len(t.intermediate_values) for t in ot
                    if t.state == optuna.trial.TrialState.PRUNED)
    assert len(pruned) <= int((trials["status"] == "stopped").sum())
    assert all(n < 2 for n in pruned)
    assert all(len(t.intermediate_values) >= 1 for t in ot)


@pytest.mark.slow
def test_stopped_trials_are_pruned_in_optuna(cola_smoke, smoke_storage):
    """The session's smoke sweep (one trial at a time, ASHA stops at least one trial): each
    stopped trial is PRUNED at the epoch ASHA stopped it, each finished one COMPLETE with its
    final best-so-far, and every epoch is one intermediate value."""
    assert cola_smoke.returncode == 0
    exp = smoke_storage / "cola_lora"
    trials = read_table(exp / "trials.csv")
    epochs = read_table(exp / "epochs.csv")
    ot = optuna_trials(exp)
    pruned = [t for t in ot if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in ot if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(pruned) == int((trials["status"] == "stopped").sum()) >= 1
    assert len(complete) == int((~(trials["status"] == "stopped")).sum())
    stopped_at = sorted(trials.loc[(trials["status"] == "stopped"), "epochs_run"])
    assert sorted(max(t.intermediate_values) for t in pruned) == stopped_at
    finals = epochs[epochs["epoch"] == 3]["best_val_auc"]
    assert sorted(t.value for t in complete) == pytest.approx(sorted(finals))
    for t in ot:  # one value per epoch, epochs 1..n
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))


@pytest.mark.slow
def test_warm_start_evaluates_the_best_first(cola_smoke, smoke_storage, tmp_path, monkeypatch,
                                             capsys):
    assert cola_smoke.returncode == 0
    earlier = smoke_storage / "cola_lora"
    best = read_table(earlier / "trials.csv").head(2)  # sorted by best_val_mcc
    storage = tmp_path / "runs"
    r = run_main(COLA_SCRIPT, [*QUICK, "--max-epochs", "1", "--warm-start", str(earlier),
                               "--warm-start-top", "2", "--storage-path", str(storage)],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "warm start: 2 configurations evaluated first" in r.stdout
    exp = storage / "cola_lora"
    first = sorted(optuna_trials(exp), key=lambda t: t.number)[:2]
    for t, (_, row) in zip(first, best.iterrows()):
        for name, value in t.params.items():
            assert value == pytest.approx(row[name]), name
    record = json.loads((exp / "experiment.json").read_text())
    assert len(record["warm_start"]["points"]) == 2


def fake_experiment(root, study="cola_lora", lora_r=16, learning_rate=5e-3):
    """An experiment directory as a finished sweep leaves it: experiment.json and one trial."""
    exp = root / "earlier"
    trial = exp / "trial_aaaa0001"
    trial.mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"study": study}))
    config = {"learning_rate": learning_rate, "lora_r": lora_r, "lora_alpha": 16,
              "lora_dropout": 0.1, "batch_size": 32, "weight_decay": 0.01, "max_epochs": 2}
    (trial / "params.json").write_text(json.dumps(config))
    (trial / "result.json").write_text(json.dumps(
        {"trial_id": "aaaa0001", "epoch": 2, "best_val_mcc": 0.3, "last_epoch": True}) + "\n")
    return str(exp)


# (case id, extra args (a function of tmp_path), substrings of the message)
BAD = [
    ("bohb-without-hyperband", lambda t: ["--searcher", "bohb", "--scheduler", "asha"],
     ["--searcher bohb", "--scheduler asha", "--scheduler hyperband"]),
    ("metric-not-offered", lambda t: ["--metric", "rouge"],
     ["--metric rouge", "auc, soft_mcc, mcc, loss"]),
    ("warm-start-not-an-experiment", lambda t: ["--warm-start", str(t)],
     ["--warm-start", "not an experiment directory"]),
    ("warm-start-other-study", lambda t: ["--warm-start", fake_experiment(t, study="cola_kd")],
     ["--warm-start", "study 'cola_kd'", "'cola_lora'"]),
    ("warm-start-outside-space", lambda t: ["--warm-start", fake_experiment(t, lora_r=64),
                                            "--space", "lora_r=4,8"],
     ["--warm-start", "lora_r = 64", "outside the current space {4, 8}"]),
    ("warm-start-range", lambda t: ["--warm-start", fake_experiment(t, learning_rate=0.5)],
     ["--warm-start", "learning_rate = 0.5", "log-uniform"]),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_choices_exit_2(case, tmp_path, monkeypatch, capsys):
    storage = tmp_path / "runs"
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", str(storage), *case[1](tmp_path)],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    for needle in case[2]:
        assert needle in r.stderr, (needle, r.stderr)
    assert not r.ray_started and not storage.exists()


def test_retrain_uses_idle_cpus():
    from types import SimpleNamespace

    plan = SimpleNamespace(node_cpus=2, total_cpus=2, concurrency=2, cpus_per_trial=1)
    assert retrain_threads(plan, 1) == 2  # one job on a 2-CPU machine gets both
    assert retrain_threads(plan, 2) == 1 and retrain_threads(plan, 5) == 1
    big = SimpleNamespace(node_cpus=16, total_cpus=16, concurrency=8, cpus_per_trial=2)
    assert retrain_threads(big, 3) == 5
    cluster = SimpleNamespace(node_cpus=0, total_cpus=64, concurrency=64, cpus_per_trial=1)
    assert retrain_threads(cluster, 1) == 1  # a job stays on one node of a cluster


def test_missing_searcher_package_names_the_extra(monkeypatch):
    """--searcher bohb without hpbandster/ConfigSpace: exit 2 naming the extra to install (the
    packages are installed here, so the check is pointed at a module that does not exist)."""
    from dataclasses import replace

    from models.errors import InputError
    from search import algorithms

    monkeypatch.setitem(algorithms.SEARCHERS, "bohb", replace(
        algorithms.SEARCHERS["bohb"], needs=("no_such_module_for_bohb",)))
    with pytest.raises(InputError, match=r"--searcher bohb: needs no_such_module_for_bohb.*"
                                         r"pip install -e '\.\[bohb\]'"):
        algorithms.resolve("bohb", None)
    assert algorithms.resolve("tpe", None) == ("tpe", "asha")


@pytest.mark.slow
def test_resume_keeps_the_recorded_search(cola_smoke, smoke_storage, tmp_path, monkeypatch,
                                          capsys):
    """--resume with another --searcher/--scheduler/--metric than the experiment was started
    with exits 2 naming the flag and the recorded value (a copy of the session's sweep)."""
    import shutil

    assert cola_smoke.returncode == 0
    storage = tmp_path / "runs"
    shutil.copytree(smoke_storage / "cola_lora", storage / "cola_lora")
    before = sorted(p.name for p in (storage / "cola_lora").iterdir())
    for flag, value, recorded in (("--searcher", "random", "'tpe'"),
                                  ("--scheduler", "median", "'asha'"),
                                  ("--metric", "loss", "'best_val_auc'")):
        r = run_main(COLA_SCRIPT, ["--smoke-test", "--resume", flag, value,
                                   "--storage-path", str(storage)], tmp_path, monkeypatch, capsys)
        assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
        assert f"{flag} {value}" in r.stderr and recorded in r.stderr, r.stderr
        assert not r.ray_started
    assert sorted(p.name for p in (storage / "cola_lora").iterdir()) == before


@pytest.mark.parametrize("extra, needle", [
    (["--objectives", "auc:max,trainable_params:min"], "needs --scheduler none"),
    (["--objectives", "auc:max,trainable_params:min", "--scheduler", "none", "--searcher",
      "cmaes"], "--searcher cmaes takes one objective"),
    (["--objectives", "auc:min,trainable_params:min", "--scheduler", "none"],
     "auc is better when maximized"),
    (["--objectives", "auc:max,speed:max", "--scheduler", "none"], "unknown objective 'speed'"),
    (["--objectives", "auc:max", "--scheduler", "none"], "two or more different objectives"),
])
def test_bad_objectives_exit_2(extra, needle, tmp_path, monkeypatch, capsys):
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", str(tmp_path / "runs"), *extra],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started and needle in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_objectives_give_a_pareto_front_in_optuna(tmp_path, monkeypatch, capsys):
    """MCC-like AUC up, trainable parameters down, LoRA rank swept: every trial is told to
    Optuna with both values; the study's best trials are its non-dominated ones, and the
    report draws the trade-off."""
    import optuna

    from results.pareto import non_dominated

    runs = tmp_path / "runs"
    r = run_main(COLA_SCRIPT, ["--smoke-test", *SMOKE_SERIAL, "--num-samples", "5",
                               "--max-epochs", "2", "--retrain-top-k", "0", "--scheduler", "none",
                               "--objectives", "auc:max,trainable_params:min",
                               "--space", "lora_r=2,4,8", "--storage-path", str(runs)],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "multi-objective" in r.stdout
    exp = runs / "cola_lora"
    record = json.loads((exp / "experiment.json").read_text())
    assert record["objectives"] == [["best_val_auc", "max"], ["trainable_params", "min"]]
    study = optuna.load_study(study_name=record["optuna_study"],
                              storage=f"sqlite:///{exp / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2
               for t in study.trials)
    trials = read_table(exp / "trials.csv")
    # (best_val_auc: the best-so-far AUC at the trial's end, what Optuna was told)
    front = trials[non_dominated(trials, {"best_val_auc": "max", "trainable_params": "min"})]
    assert {round(t.values[0], 8) for t in study.best_trials} == \
        {round(v, 8) for v in front["best_val_auc"]}
