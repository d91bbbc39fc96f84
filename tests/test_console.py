"""The sweep's own console (search.progress, models.console) and the times the console and the
report share (results.frames.sweep_times): fast, no Ray started."""
import time
from pathlib import Path
from types import SimpleNamespace

from models.console import Heartbeat, clock
from results.frames import TrialRecord, sweep_times
from search.progress import Progress


def _trial(tid, status="RUNNING", config=None, last=None):
    return SimpleNamespace(trial_id=tid, status=status, config=config or {}, last_result=last)


def test_progress_lines_and_heartbeat(capsys):
    p = Progress(shown=["val_auc", "val_mcc"], best_key="best_val_mcc", mode="max",
                 max_epochs=3, stopper="ASHA")
    a, b = _trial("a"), _trial("b")
    p.on_trial_result(0, [a, b], a, {"epoch": 1, "val_auc": 0.61, "val_mcc": 0.0,
                                     "best_val_mcc": 0.0})
    p.on_trial_result(0, [a, b], b, {"epoch": 1, "val_auc": 0.7, "val_mcc": 0.2,
                                     "best_val_mcc": 0.2})
    a.last_result = {"epoch": 1}
    p.on_trial_complete(0, [a, b], a)
    b.last_result = {"epoch": 3, "last_epoch": True}
    p.on_trial_complete(0, [a, b], b)
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("trial a epoch 1/3: val_auc 0.61, val_mcc 0 | best val_mcc so far 0 "
                           "(trial a)")
    assert "best val_mcc so far 0.2 (trial b)" in out[1]
    assert out[2].endswith("trial a stopped by ASHA after epoch 1")
    assert out[3].endswith("trial b completed after 3 epochs")
    # nothing for 10 s while a trial runs: one heartbeat line, then quiet again
    c = _trial("c")
    p.on_step_begin(0, [c, _trial("d", "PENDING")])
    assert capsys.readouterr().out == ""
    p.last_line -= 11
    p.on_step_begin(0, [c, _trial("d", "PENDING")])
    beat = capsys.readouterr().out
    assert "1 running (c in epoch 1), 1 waiting, 2 ended" in beat
    p.on_step_begin(0, [c])
    assert capsys.readouterr().out == ""


def test_retrain_job_lines_and_failure(capsys):
    p = Progress(shown=["dev_mcc"], best_key="dev_mcc", mode="max", max_epochs=2, stopper=None,
                 label="retrain job")
    t = _trial("x", config={"job": {"_job": "abc123-seed0"}})
    p.on_trial_result(0, [t], t, {"epoch": 1, "dev_mcc": 0.3})
    t.last_result = {"epoch": 1, "failure": "non-finite training loss (nan) in epoch 1"}
    p.on_trial_complete(0, [t], t)
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("retrain job abc123-seed0 epoch 1/2: dev_mcc 0.3")
    assert "best" not in out[0]
    assert out[1].endswith("retrain job abc123-seed0 failed at epoch 1: non-finite training "
                           "loss (nan) in epoch 1")


def test_heartbeat_and_clock(capsys):
    with Heartbeat("converting", every=0.05):
        time.sleep(0.18)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "converting ..." and out[-1].startswith("   converting: done in")
    assert any(line.startswith("   ... converting:") for line in out[1:-1])
    assert [clock(s) for s in (48.4, 148, 3725)] == ["48 s", "2 min 28 s", "1 h 02 min"]


def test_active_compute_is_the_union_of_epochs_and_elapsed_counts_downtime():
    def rec(rows):
        return TrialRecord("t", Path("."), {}, rows, errored=False)

    # two trials side by side for 10 s, then a 100 s gap (a resume), then one 5 s epoch
    a = rec([{"timestamp": 110, "time_total_s": 10, "time_this_iter_s": 10}])
    b = rec([{"timestamp": 105, "time_total_s": 5, "time_this_iter_s": 5},
             {"timestamp": 215, "time_total_s": 10, "time_this_iter_s": 5}])
    t = sweep_times([a, b])
    assert t["active_s"] == 15 and t["elapsed_s"] == 215 - 100
