"""A full disk, for real: small tmpfs mounts stand for the storage. A sweep that does not fit
exits 2 before any work; a write that fails anyway (here: the file system has bytes but no
inodes left) leaves no partial file and no experiment behind, and says what to do. Needs root
for ``mount`` (CI and the development machines run as root)."""
import errno
import os
import subprocess

import pytest

from conftest import COLA_SCRIPT, run_main


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name, **opts):
        where = tmp_path / name
        where.mkdir()
        options = ",".join(f"{k}={v}" for k, v in opts.items())
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): needs root")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_sweep_the_storage_cannot_hold_exits_2_before_anything(tmpfs, tmp_path, monkeypatch,
                                                                 capsys):
    small = tmpfs("small", size="1m")
    storage = small / "runs"
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", str(storage)], tmp_path,
                 monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"--storage-path {str(storage)!r}: the sweep writes about" in r.stderr, r.stderr
    assert "MB are free there" in r.stderr and "6 trials x 2 checkpoints" in r.stderr
    assert list(small.iterdir()) == []  # not even the lock or the storage folder


def test_the_disk_plan_counts_checkpoints_retrains_and_study_files():
    from types import SimpleNamespace

    from search.disk import MB, TABLES, plan_disk, sweep_bytes

    plan = SimpleNamespace(name="x", study=SimpleNamespace(name="s"), space={}, num_samples=10,
                           max_epochs=3, retrain_top_k=2, retrain_seeds=3)
    # 1 M trainable parameters: 16 MB a checkpoint, 2 kept by each of 10 trials, and 6 jobs
    assert sweep_bytes(plan, 10 ** 6) > (10 * 2 + 6) * 16 * 10 ** 6 + TABLES
    def trainable(study, space):
        return 10 ** 6

    note = plan_disk([plan], trainable, 5 * MB, os.getcwd(), resume=False)
    assert note["need_mb"] * MB >= sweep_bytes(plan, 10 ** 6) + 5 * MB - MB
    resumed = plan_disk([plan], trainable, 5 * MB, os.getcwd(), resume=True)
    assert resumed["need_mb"] < note["need_mb"]  # the study files were copied the first time


def test_a_write_that_fails_anyway_leaves_nothing_half_done(tmpfs, tmp_path, monkeypatch,
                                                            capsys):
    # bytes to spare, but room for only a few files: the smoke model's copy fails midway
    starved = tmpfs("starved", size="64m", nr_inodes="6")
    storage = starved / "runs"
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", str(storage)], tmp_path,
                 monkeypatch, capsys)
    assert r.returncode == 1 and not r.ray_started, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"the storage at {storage} is full" in r.stderr, r.stderr
    assert "nothing of it was kept" in r.stderr and "run the same command again" in r.stderr
    assert "Traceback" not in r.stderr
    # no experiment folder, no partial copy, no lock: the same command can simply run again
    assert [p.name for p in storage.rglob("*")] == []


def test_copy_and_write_are_whole_or_absent(tmpfs, tmp_path):
    from search.disk import copy_tree, write_text

    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"w{i}.bin").write_bytes(os.urandom(300 * 1024))
    small = tmpfs("tiny", size="1m")
    with pytest.raises(OSError) as e:
        copy_tree(src, small / "model")
    assert e.value.errno == errno.ENOSPC
    assert list(small.iterdir()) == []
    with pytest.raises(OSError):
        write_text(small / "experiment.json", "x" * (2 * 1024 * 1024))
    assert list(small.iterdir()) == []
    write_text(small / "experiment.json", "{}")
    assert [p.name for p in small.iterdir()] == ["experiment.json"]
