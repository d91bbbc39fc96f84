"""The driver's Ray-side parts on their own, without starting Ray: what the searcher tells
Optuna about each kind of trial end (real Optuna, SQLite storage), closing a killed driver's
orphans, ASHA's rungs through a save and restore, and the memory-monitor patch."""
from types import SimpleNamespace

import optuna
import pytest
from ray import tune

from search.optuna_search import (ORPHAN_NOTE, PrunedAwareOptunaSearch, SafeRDBStorage,
                                  fail_orphans)

States = optuna.trial.TrialState


def searcher(url: str) -> PrunedAwareOptunaSearch:
    return PrunedAwareOptunaSearch(
        space={"learning_rate": tune.loguniform(1e-4, 1e-1)}, metric="val_mcc", mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0), storage=SafeRDBStorage(url),
        study_name="s")


def test_each_trial_end_reaches_optuna_as_what_it_was(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = searcher(url)
    for tid in ("done", "stopped", "failed", "orphan", "replaced"):
        assert 1e-4 <= s.suggest(tid)["learning_rate"] <= 1e-1
    # ran to its last epoch: COMPLETE with its final value, one intermediate value per epoch
    s.on_trial_result("done", {"val_mcc": 0.1, "epoch": 1})
    s.on_trial_complete("done", {"val_mcc": 0.3, "epoch": 2, "last_epoch": True})
    # stopped by the scheduler after epoch 1 (Tune hands over the stopping result): PRUNED
    s.on_trial_complete("stopped", {"val_mcc": 0.05, "epoch": 1})
    # an error, or a failure the trial reported itself: FAIL
    s.on_trial_complete("failed", None, error=True)
    s.on_trial_complete("replaced", {"val_mcc": 0.2, "epoch": 1, "last_epoch": True})
    study = optuna.load_study(study_name="s", storage=url)
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert by_id["done"].state == States.COMPLETE and by_id["done"].value == 0.3
    assert by_id["done"].intermediate_values == {1: 0.1, 2: 0.3}
    assert by_id["stopped"].state == States.PRUNED
    assert by_id["stopped"].intermediate_values == {1: 0.05}
    assert by_id["failed"].state == States.FAIL
    assert by_id["orphan"].state == States.RUNNING
    # after a resumed sweep: Tune knows done, stopped and failed only. The orphan (never run)
    # is closed as FAIL with a note; the one that finished after Tune's last snapshot stays,
    # and is named.
    closed, replaced = fail_orphans(url, "s", {"done", "stopped", "failed"})
    assert (closed, replaced) == (1, 1)
    out = capsys.readouterr().out
    assert "1 trial(s) asked before a hard kill" in out and "ran after Tune's last snapshot" in out
    orphan = optuna.load_study(study_name="s", storage=url).trials[3]
    assert orphan.state == States.FAIL and orphan.user_attrs["failed_because"] == ORPHAN_NOTE
    # the sweep resumed once more (killed again in its retrain): the orphan closed above is
    # neither closed again nor named as replaced; the replaced trial still is
    assert fail_orphans(url, "s", {"done", "stopped", "failed"}) == (0, 1)
    out = capsys.readouterr().out
    assert "asked before a hard kill" not in out and "1 trial(s) (numbers 4)" in out
    assert fail_orphans(url, "no-such-study", set()) == (0, 0)


def test_asha_rungs_survive_a_save_and_restore():
    from ray.tune.experiment import Trial

    from search.resumable_schedulers import ResumableASHA, SchedulerState

    def asha():
        return ResumableASHA(time_attr="epoch", metric="val_mcc", mode="max", max_t=4,
                             grace_period=1, reduction_factor=2)

    def trial(tid):
        return Trial("trainable", config={}, trial_id=tid, stub=True)

    first = asha()
    trials = {tid: trial(tid) for tid in ("a", "b", "c")}
    for tid, t in trials.items():
        first.on_trial_add(None, t)
    for tid, value in (("a", 0.5), ("b", 0.4)):
        first.on_trial_result(None, trials[tid], {"epoch": 1, "val_mcc": value})
    saved = SchedulerState(first).get_state()

    restored = asha()
    SchedulerState(restored).set_state(saved)
    assert restored.rungs() == first.rungs()
    # b was told to stop (0.4 is under the rung's cut-off) and had not ended: it ends as it is
    # added back, and the searcher hears of it, as from Tune's stop_trial.
    completed = []
    controller = SimpleNamespace(search_alg=SimpleNamespace(
        on_trial_complete=lambda tid, result=None: completed.append(tid)))
    for t in trials.values():
        restored.on_trial_add(controller, t)
    assert completed == ["b"] and trials["b"].status == Trial.TERMINATED
    # c, below the recorded rung's cut-off, is stopped at that rung as it would have been
    # without the restore (an empty rung would let it continue)
    fresh = asha()
    fresh.on_trial_add(None, trials["c"])
    assert fresh.on_trial_result(None, trials["c"], {"epoch": 1, "val_mcc": 0.1}) == "CONTINUE"
    assert restored.on_trial_result(None, trials["c"], {"epoch": 1, "val_mcc": 0.1}) == "STOP"


def test_memory_monitor_kill_becomes_an_actor_death(monkeypatch):
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.exceptions import OutOfMemoryError, RayActorError

    from search import oom

    seen = []
    monkeypatch.setattr(RayActorManager, "_actor_task_failed",
                        lambda self, task, exception: seen.append(exception))
    oom.install()
    oom.install()  # once per process, however often it is called
    RayActorManager._actor_task_failed(None, None, OutOfMemoryError("node at 97 % memory"))
    other = RuntimeError("something else")
    RayActorManager._actor_task_failed(None, None, other)
    assert isinstance(seen[0], RayActorError) and oom.MEMORY_KILLED in str(seen[0])
    assert "node at 97 % memory" in str(seen[0])
    assert seen[1] is other


@pytest.mark.parametrize("argv, message", [
    (["report", "no/such/dir"], "no such directory"),
])
def test_report_command_bad_input_exits_2(tmp_path, capsys, argv, message):
    from results.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_report_command_writes_the_report(tmp_path, capsys):
    from results.__main__ import main
    from test_report_synthetic import _experiment

    exp = _experiment(tmp_path)
    assert main(["report", str(exp), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Non-dominated trials (2 of 12)" in text
    assert (tmp_path / "rep" / "1_cola_lora_learning_curves.png").is_file()
    assert "1_cola_lora_learning_curves.png" in text
