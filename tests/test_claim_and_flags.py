"""Who owns an experiment and what --resume must keep: every flag declared KEEP / OWN / FREE,
--resume refusing a changed KEEP flag, --name as one path component, and the experiment lock
(a second sweep of the same name exits 2 naming the holder; a dead holder's lock is taken
over). Fast: no Ray, no sweep (the lock is held by a small real process)."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import COLA_SCRIPT, REPO, run_main
from models.errors import InputError

SCRIPTS = {name: REPO / "search" / f"{name}.py" for name in ("cola_lora", "cola_kd", "cnndm_summarize")}


def _parser(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parser()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_flag_is_declared_for_resume(script):
    """A new flag must say whether --resume compares it (search.flags.declare)."""
    from search.flags import KINDS

    p = _parser(script)
    kinds = p.get_default("_resume_kinds")
    dests = {a.dest for a in p._actions if a.dest != "help"}
    assert dests - set(kinds) == set(), f"flags not declared for --resume: {dests - set(kinds)}"
    assert set(kinds) - dests == set(), f"declared but not flags: {set(kinds) - dests}"
    assert set(kinds.values()) <= set(KINDS)


def _record(tmp_path, script, argv):
    from search.flags import study_flags

    exp = tmp_path / "exp"
    exp.mkdir(exist_ok=True)
    args = _parser(script).parse_args(argv)
    (exp / "experiment.json").write_text(json.dumps({"flags": study_flags(args)}))
    return exp


@pytest.mark.parametrize("script, first, again, needle", [
    ("cola_lora", ["--max-length", "128"], ["--max-length", "16"],
     "--max-length 16: the experiment 'exp' was started with --max-length 128"),
    ("cola_lora", [], ["--no-length-grouping"], "--no-length-grouping (given)"),
    ("cnndm_summarize", [], ["--max-source-tokens", "64"], "--max-source-tokens 64"),
    ("cnndm_summarize", ["--max-target-tokens", "32"], [], "--max-target-tokens (not given)"),
    ("cnndm_summarize", [], ["--separator", " Summary:"], "--separator ' Summary:'"),
    ("cola_kd", ["--teacher", "a"], ["--teacher", "b"], "--teacher 'b'"),
])
def test_resume_refuses_a_changed_study_flag(tmp_path, script, first, again, needle):
    from search.checks import check_same_flags

    exp = _record(tmp_path, script, first)
    with pytest.raises(InputError) as e:
        check_same_flags(exp, _parser(script).parse_args(again))
    assert needle in str(e.value) and "--resume continues it as it was started" in str(e.value)


def test_resume_accepts_the_same_flags_and_changed_run_flags(tmp_path, monkeypatch):
    from search.checks import check_same_flags

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    exp = _record(tmp_path, "cola_lora", ["--data-dir", "data", "--max-length", "64"])
    # the same directory named absolutely; threads, verbosity, trackers may change
    check_same_flags(exp, _parser("cola_lora").parse_args(
        ["--data-dir", str(tmp_path / "data"), "--max-length", "64", "--cpus-per-trial", "2",
         "-v", "--log-to", "tensorboard"]))


@pytest.mark.parametrize("name, why", [
    (".", "names the storage directory itself"), ("..", "its parent"),
    ("a/b", "path separator"), ("/abs/x", "path separator"), ("", "empty"),
    (".hidden", "starts with '.'"),
])
def test_name_must_be_one_path_component(name, why, tmp_path, monkeypatch, capsys):
    storage = tmp_path / "runs"
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--name", name, "--storage-path", str(storage)],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and f"--name {name!r}" in r.stderr and why in r.stderr, r.stderr
    assert not r.ray_started and not storage.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing beside it either


HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from search.claim import claim
with claim(Path({storage!r}), [{name!r}], resume=False):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold(storage, name):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO), storage=str(storage),
                                                                 name=name)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_sweep_of_the_same_name_exits_2_naming_the_holder(tmp_path, monkeypatch, capsys):
    storage = tmp_path / "runs"
    holder = _hold(storage, "cola_lora")
    try:
        for extra in ([], ["--resume"]):
            r = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", str(storage), *extra],
                         tmp_path, monkeypatch, capsys)
            assert r.returncode == 2 and not r.ray_started, r.stderr
            assert f"being written by a running sweep (pid {holder.pid} on" in r.stderr, r.stderr
        # the refused commands left the holder's lock alone and wrote nothing else
        assert [p.name for p in storage.iterdir()] == [".cola_lora.lock"]
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holders_lock_is_taken_over_and_released(tmp_path, capsys):
    from search.claim import claim, lock_path

    storage = tmp_path / "runs"
    holder = _hold(storage, "x")
    os.kill(holder.pid, signal.SIGKILL)  # a killed driver: its lock stays behind
    holder.wait()
    stale = json.loads(lock_path(storage, "x").read_text())
    assert stale["pid"] == holder.pid
    with claim(storage, ["x"], resume=True):
        now = json.loads(lock_path(storage, "x").read_text())
        assert now["pid"] == os.getpid()
        with pytest.raises(InputError, match=f"pid {os.getpid()} on"):
            with claim(storage, ["x"], resume=True):
                pass
    assert "taking over the lock of a sweep that is gone" in capsys.readouterr().out
    assert not lock_path(storage, "x").exists()


def test_another_hosts_lock_is_stale_only_without_heartbeats(tmp_path):
    from search import claim as claim_mod

    storage = tmp_path / "runs"
    storage.mkdir()
    path = claim_mod.lock_path(storage, "x")
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": time.time()}))
    with pytest.raises(InputError, match="pid 1 on elsewhere"):
        claim_mod.acquire(storage, "x", resume=True, command="c")
    old = time.time() - claim_mod.STALE_S - 5
    os.utime(path, (old, old))
    assert claim_mod.acquire(storage, "x", resume=True, command="c") == path
    assert json.loads(path.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("text, what", [("[1, 2]", "holds a JSON list"), ("{", "not valid JSON")])
def test_resume_with_a_damaged_record_exits_2_saying_what_to_do(tmp_path, text, what):
    from search.checks import check_same_flags

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "experiment.json").write_text(text)
    with pytest.raises(InputError) as e:
        check_same_flags(exp, _parser("cola_lora").parse_args([]))
    assert what in str(e.value) and f"delete {exp}" in str(e.value)
