"""Fault tolerance with a real local Ray: the driver hard-killed (SIGKILL) during the sweep and
again during the retrain, then --resume; a diverging (NaN) trial ends alone with a clear status;
an error retrying cannot fix fails its trial once."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import COLA_SCRIPT, cli_env, run_main, read_table
from search.sweep import trial_statuses


def start(args, tmp_path):
    # Own session: SIGKILL reaches the driver and the Ray processes it started, like a crash.
    return subprocess.Popen([sys.executable, str(COLA_SCRIPT), *args], cwd=tmp_path,
                            env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def hard_kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    time.sleep(2)  # let orphaned Ray processes notice their parent is gone


def wait_for(cond, proc, timeout=400):
    deadline = time.time() + timeout
    while not cond() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the command ended before it could be killed"


@pytest.mark.slow
def test_driver_killed_in_sweep_and_in_retrain(tmp_path, monkeypatch, capsys):
    import optuna

    storage = tmp_path / "runs"
    exp = storage / "ft"
    args = ["--smoke-test", "--num-samples", "8", "--max-epochs", "3", "--retrain-top-k", "2",
            "--retrain-seeds", "2", "--name", "ft", "--storage-path", str(storage)]

    # 1. SIGKILL once four trials have started: two at a time, so at least two have ended.
    proc = start(args, tmp_path)
    wait_for(lambda: len(list(exp.glob("trial_*"))) >= 4, proc)
    hard_kill(proc)
    statuses = trial_statuses(exp)  # as the driver last recorded them
    finished = {tid: (exp / f"trial_{tid}" / "result.json").read_text()
                for tid, st in statuses.items() if st == "TERMINATED"}
    assert 1 <= len(finished) < 8, statuses  # the kill came after some trials, not all

    # 2. --resume, and SIGKILL again once the first retrain job has finished.
    proc = start(args + ["--resume"], tmp_path)
    wait_for(lambda: len(list((exp / "retrained").glob("*/metrics.json"))) >= 1, proc, 600)
    hard_kill(proc)
    assert len(list((exp / "retrained").glob("*/metrics.json"))) < 4

    # 3. --resume finishes what is missing. (The killed drivers were real processes; this one
    # runs in this process, see run_main.)
    r = run_main(COLA_SCRIPT, args + ["--resume"], tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    trials = read_table(exp / "trials.csv")
    # (a SIGKILL can leave a folder of a trial started after Tune's last state snapshot;
    # Tune replaces it on resume and the tables leave it out)
    assert len(trials) == 8 and set(trials["trial_id"]) == set(trial_statuses(exp))
    for tid, text in finished.items():
        assert (exp / f"trial_{tid}" / "result.json").read_text() == text, f"{tid} was rerun"
    # searcher state intact: the Optuna study holds exactly the 8 trials, each with the
    # configuration Tune ran
    record = json.loads((exp / "experiment.json").read_text())
    study = optuna.load_study(study_name=record["optuna_study"], storage=record["optuna_storage"])
    # none left RUNNING: trials asked after Tune's last snapshot before a kill are closed as
    # FAIL with a note, and only those
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    orphans = [t for t in study.trials if t.user_attrs.get("failed_because")]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in orphans)
    # every Tune trial owns exactly one finished study trial, with the configuration Tune ran;
    # a trial that finished after Tune's last snapshot (Tune ran that slot again) is kept and
    # named on the console
    done = [t for t in study.trials if t.state.is_finished() and t not in orphans]
    owned = {t.user_attrs.get("tune_trial_id"): t for t in done}
    assert len(owned) == len(done)  # no Tune trial told twice
    ids = set(trials["trial_id"])
    assert ids <= set(owned)
    replaced = set(owned) - ids
    assert ("ran after Tune's last snapshot" in r.stdout) == bool(replaced), replaced
    ran = {tid: round(float(v), 12) for tid, v in zip(trials["trial_id"], trials["learning_rate"])}
    assert {tid: round(owned[tid].params["learning_rate"], 12) for tid in ids} == ran
    # the retrain: exactly one result per (configuration, seed)
    runs = read_table(exp / "retrain_runs.csv")
    assert len(runs) == 4 and not runs.duplicated(["rank", "seed"]).any()
    assert sorted(p.name for p in (exp / "retrained").iterdir()) == sorted(runs["job"])


@pytest.mark.slow
def test_nan_trial_ends_alone(tmp_path, monkeypatch, capsys):
    storage = tmp_path / "runs"
    # An absurd learning rate next to a sane one: the absurd trials diverge. (The command runs
    # in this process, see run_main; its trials run in Ray's worker processes as always.)
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--space", "learning_rate=1e-2,1e30",
                               "--num-samples", "6", "--retrain-top-k", "1", "--retrain-seeds", "1",
                               "--storage-path", str(storage)], tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    trials = read_table(storage / "cola_lora" / "trials.csv")
    failed = trials[trials["status"] == "failed"]
    assert len(failed) >= 1 and (failed["learning_rate"] == 1e30).all()
    assert failed["failure"].str.contains("non-finite training loss").all()
    assert (trials.loc[trials["status"] != "failed", "learning_rate"] == 1e-2).all()
    assert "failed: non-finite training loss" in r.stdout
    runs = read_table(storage / "cola_lora" / "retrain_runs.csv")  # the sweep went on
    assert len(runs) == 1 and runs["learning_rate"].iloc[0] == 1e-2


@pytest.mark.slow
def test_unfixable_error_fails_the_trial_once(tmp_path, monkeypatch, tiny_model, synthetic):
    import ray

    from conftest import ray_tmpdir
    from models.data.classification import tokenize_splits
    from models.hf import load_tokenizer
    from models.registry import get_study
    from results import trial_frame
    from search.sweep import SweepPlan, build_tuner
    from spaces.dims import LogUniform

    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmpdir(tmp_path)))
    data = tokenize_splits(synthetic, load_tokenizer(tiny_model), selection_fraction=0.1, seed=0)
    plan = SweepPlan(study=get_study("cola_lora"), storage_path=tmp_path, name="gone",
                     space={"learning_rate": LogUniform(1e-3, 1e-2)},
                     fixed={"model": str(tmp_path / "deleted-model"), "max_epochs": 2, "seed": 0,
                            "num_threads": 1},
                     num_samples=2, max_epochs=2, grace_period=1, reduction_factor=2, seed=0,
                     cpus_per_trial=1, gpus_per_trial=0, concurrency=2, retrain_top_k=0,
                     retrain_seeds=1, max_failures=3)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        build_tuner(plan, data, {"git_commit": "test"}).fit()
    finally:
        ray.shutdown()
    trials = trial_frame(plan.exp_dir, metric="best_val_mcc")
    assert len(trials) == 2 and (trials["status"] == "failed").all()
    assert trials["failure"].str.startswith("FileNotFoundError: model directory").all()
    for d in plan.exp_dir.glob("trial_*"):
        assert not (d / "error.txt").exists()  # never raised, so never retried
        assert len((d / "result.json").read_text().splitlines()) == 1  # one attempt, one row


def test_a_failed_trial_is_never_picked_for_retrain(tmp_path):
    """A trial that failed (here with the best score so far) is passed over for the next."""
    import pandas as pd

    from models.registry import get_study
    from search.retrain import top_configs
    from search.sweep import SweepPlan

    study = get_study("cola_lora")
    plan = SweepPlan(study=study, storage_path=tmp_path, name="t", space=dict(study.space),
                     fixed={}, num_samples=3, max_epochs=1, grace_period=1, reduction_factor=2,
                     seed=0, cpus_per_trial=1, gpus_per_trial=0, concurrency=1,
                     retrain_top_k=1, retrain_seeds=1)
    hp = {k: d.edges()[0] for k, d in study.space.items()}
    trials = pd.DataFrame([
        {"trial_id": "bad", "status": "failed", study.metric: 0.9, **hp},
        {"trial_id": "err", "status": "failed", study.metric: 0.8, **hp},
        {"trial_id": "good", "status": "completed", study.metric: 0.5, **hp}])
    assert [c["trial_id"] for c in top_configs(trials, plan)] == ["good"]


def _epochs_and_pids(trial_dir):
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    return [r["epoch"] for r in rows], [r["pid"] for r in rows]


def _one_slow_trial(tmp_path, shared_cola, name: str, *, max_failures: int) -> list[str]:
    """One trial of 6 epochs on 2,000 real CoLA sentences (epochs of seconds, so a kill after
    epoch 2 lands mid-trial), no scheduler, no retrain."""
    from conftest import SMOKE_SERIAL

    return ["--smoke-test", *SMOKE_SERIAL, "--data-dir", str(shared_cola), "--max-train-samples",
            "2000", "--num-samples", "1", "--max-epochs", "6", "--scheduler", "none",
            "--retrain-top-k", "0", "--max-failures", str(max_failures), "--name", name,
            "--storage-path", str(tmp_path / "runs")]


def _kill_worker_after_two_epochs(args, tmp_path, exp):
    """Start the sweep, SIGKILL the first trial's worker process once that trial has reported
    two (checkpointed) epochs; -> (the killed trial's folder, the sweep's output)."""
    proc = start(args, tmp_path)
    try:
        first = lambda: sorted(exp.glob("trial_*/result.json"))  # noqa: E731
        wait_for(lambda: first() and len(first()[0].read_text().splitlines()) >= 2, proc)
        trial = first()[0].parent
        _, pids = _epochs_and_pids(trial)
        os.kill(pids[-1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return trial, out, proc.returncode


@pytest.mark.slow
def test_a_killed_trial_worker_resumes_from_its_checkpoint(tmp_path, shared_cola):
    """The retried trial goes on from its last checkpoint: no epoch is run twice, and the epoch
    after the kill comes from a new worker process."""
    exp = tmp_path / "runs" / "kw"
    args = _one_slow_trial(tmp_path, shared_cola, "kw", max_failures=1)
    trial, out, code = _kill_worker_after_two_epochs(args, tmp_path, exp)
    assert code == 0, out[-3000:]
    epochs, pids = _epochs_and_pids(trial)
    assert epochs == [1, 2, 3, 4, 5, 6], epochs  # not [1, 2, 1, 2, ...]: from the checkpoint
    assert len(set(pids)) == 2 and pids[0] != pids[-1]
    assert (trial / "error.txt").is_file()  # the lost attempt is on record


@pytest.mark.slow
def test_resume_continues_an_errored_trial_from_its_checkpoint(tmp_path, shared_cola, monkeypatch,
                                                               capsys):
    """No retries left: the trial ends ERROR; --resume continues it from its checkpoint."""
    exp = tmp_path / "runs" / "er"
    args = _one_slow_trial(tmp_path, shared_cola, "er", max_failures=0)
    trial, out, _ = _kill_worker_after_two_epochs(args, tmp_path, exp)
    status = lambda: read_table(exp / "trials.csv").set_index("trial_id").loc[  # noqa: E731
        trial.name.removeprefix("trial_"), "status"]
    assert status() == "failed", out[-3000:]
    before, _ = _epochs_and_pids(trial)
    assert before[-1] < 6
    r = run_main(COLA_SCRIPT, args + ["--resume"], tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    epochs, _ = _epochs_and_pids(trial)
    assert epochs == list(range(1, 7)), epochs  # went on after epoch before[-1], not from 1
    assert status() == "completed"


@pytest.mark.slow
def test_three_hard_kills_at_random_points_then_resume_until_done(tmp_path, monkeypatch, capsys):
    """SIGKILL the driver three times at seeded random moments (each run resumed), then resume
    to the end: the total is --num-samples, a finished trial's files never change, and the
    number of finished trials never goes back."""
    import random

    rng = random.Random(7)
    storage = tmp_path / "runs"
    exp = storage / "rk"
    args = ["--smoke-test", "--num-samples", "8", "--max-epochs", "3", "--retrain-top-k", "1",
            "--retrain-seeds", "1", "--name", "rk", "--storage-path", str(storage)]
    finished: dict[str, str] = {}
    progress = []
    for attempt in range(3):
        proc = start(args + (["--resume"] if attempt else []), tmp_path)
        wait_for(lambda: any(exp.glob("trial_*/result.json")), proc)
        time.sleep(rng.uniform(1.0, 8.0))
        if proc.poll() is not None:
            break  # it finished before this kill: the resumes below still must hold
        hard_kill(proc)
        statuses = trial_statuses(exp) if (exp / "tuner.pkl").exists() else {}
        done = {t: (exp / f"trial_{t}" / "result.json").read_text()
                for t, st in statuses.items() if st == "TERMINATED"}
        for t, text in finished.items():
            assert done.get(t) == text, f"finished trial {t} changed or vanished after a kill"
        finished = done
        progress.append(len(done))
    assert progress == sorted(progress), progress  # never goes back
    r = run_main(COLA_SCRIPT, args + ["--resume"], tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    trials = read_table(exp / "trials.csv")
    assert len(trials) == 8 and set(trials["trial_id"]) == set(trial_statuses(exp))
    for t, text in finished.items():
        assert (exp / f"trial_{t}" / "result.json").read_text() == text, f"{t} was rerun"
    assert len(read_table(exp / "retrain_runs.csv")) == 1


@pytest.mark.slow
def test_out_of_gpu_memory_fails_the_trial_once_naming_batch_and_share(tmp_path, monkeypatch):
    """A trial whose step raises torch's OutOfMemoryError (the error a CUDA allocation raises)
    ends once, FAILED, with a message naming its batch size and GPU share; Tune does not retry
    it (the same batch would not fit again) and the other trial runs to its end."""
    import ray
    import torch
    from ray import tune

    from conftest import ray_tmpdir
    from models.config import TrialConfig
    from models.loop import TrialSetup
    from models.trial import run_trial
    from results import trial_frame

    def setup(cfg, data, device):
        model = torch.nn.Linear(4, 2)

        def loss_fn(m, batch):
            if cfg.batch_size == 64:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return m(batch["x"]).pow(2).mean()

        return TrialSetup(
            model=model, loss_fn=loss_fn, steps_per_epoch=2,
            train_batches=lambda epoch: [{"x": torch.randn(cfg.batch_size, 4)}] * 2,
            evaluate=lambda m: {"val_loss": 1.0 / (1 + len(m.weight))},
            best_metric="val_loss", mode="min",
            save_weights=lambda d: torch.save(model.state_dict(), f"{d}/w.pt"),
            load_weights=lambda d: model.load_state_dict(torch.load(f"{d}/w.pt")),
            info={})

    def trainable(config):
        run_trial(config, data=None, provenance={}, config_cls=TrialConfig, setup_fn=setup)

    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmpdir(tmp_path)))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tune.Tuner(trainable, param_space={"batch_size": tune.grid_search([64, 8]),
                                           "max_epochs": 2, "_metric": "best_val_loss"},
                   tune_config=tune.TuneConfig(
                       trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
                   run_config=tune.RunConfig(name="oom", storage_path=str(tmp_path),
                                             failure_config=tune.FailureConfig(max_failures=2))
                   ).fit()
    finally:
        ray.shutdown()
    trials = trial_frame(tmp_path / "oom", metric="best_val_loss", mode="min")
    by_batch = trials.set_index("batch_size")
    assert by_batch.loc[64, "status"] == "failed"
    failure = by_batch.loc[64, "failure"]
    assert "out of GPU memory at batch_size 64" in failure and "--gpus-per-trial" in failure
    assert "Tried to allocate 2.00 GiB" in failure
    assert not list((tmp_path / "oom").glob("trial_*/error.txt"))  # raised nothing: no retry
    assert by_batch.loc[8, "status"] == "completed" and by_batch.loc[8, "epochs_run"] == 2
