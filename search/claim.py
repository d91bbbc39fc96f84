"""Who owns an experiment: ``--name`` as one plain path component, and a lock that a sweep
claims atomically before any work and holds for its whole life, so that two sweeps with the
same name never write into one directory.

The lock is a file beside the experiment, ``<storage>/.<name>.lock``, created with
``O_CREAT | O_EXCL`` (atomic on local file systems and on NFSv3+), holding who took it (host,
pid, the process's start time, when, the command). The holder refreshes its modification time
every ``HEARTBEAT_S`` seconds. A lock is stale when its holder is gone: on this host, the pid
no longer runs the process that took it; on another host (shared storage), it has not been
refreshed for ``STALE_S`` seconds. A stale lock is taken over (``--resume`` continues what the
killed driver left; a new sweep reports the leftover directory as before). The file is removed
when the sweep ends, also on bad input, so a refused command leaves nothing behind.

A cloud ``--storage-path`` is locked in its local mirror only: object stores offer no atomic
create that every client honours.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path

from models.errors import InputError

HEARTBEAT_S = 10.0
STALE_S = 120.0  # several missed heartbeats: the holder on another host is gone


def check_name(name: str) -> str:
    """``--name``: one plain path component, so that the experiment stays inside
    ``--storage-path`` (``.``, ``..``, ``a/b`` and absolute paths would not)."""
    bad = ("it is empty" if not name.strip() else
           "it names the storage directory itself or its parent" if name in (".", "..") else
           "it contains a path separator" if "/" in name or os.sep in name or
           (os.altsep and os.altsep in name) else
           "it contains a NUL or control character" if any(ord(c) < 32 for c in name) else
           "it starts with '.' (hidden, and the lock files' prefix)" if name.startswith(".")
           else None)
    if bad:
        raise InputError(f"--name {name!r}: {bad}; allowed: one plain name such as cola_lora-2 "
                         "(letters, digits, '-', '_', not starting with '.')")
    return name


def lock_path(storage: Path, name: str) -> Path:
    return storage / f".{name}.lock"


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def _holder_alive(holder: dict, mtime: float) -> bool:
    if holder.get("host") == socket.gethostname():
        started = _start_time(int(holder.get("pid", -1)))
        # the same pid with another start time is a reused pid, not the holder
        return started is not None and abs(started - float(holder.get("pid_started", 0))) < 1.0
    return time.time() - mtime < STALE_S


def describe_holder(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return (f"pid {holder.get('pid')} on {holder.get('host')}, since {since}: "
            f"{holder.get('command', '?')}")


def _read(path: Path) -> tuple[dict, float] | None:
    try:
        mtime = path.stat().st_mtime
        return json.loads(path.read_text() or "{}"), mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # half-written by a holder killed while creating it
        return {}, path.stat().st_mtime if path.exists() else 0.0


def _create(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(holder))
    return True


def acquire(storage: Path, name: str, *, resume: bool, command: str) -> Path:
    """Claim the experiment ``name``; InputError when a live sweep holds it. -> the lock file."""
    path = lock_path(storage, name)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "pid_started": _start_time(os.getpid()) or 0.0, "since": time.time(),
          "command": command}
    for _ in range(3):  # a stale lock removed by a third party in between: try again
        if _create(path, me):
            return path
        seen = _read(path)
        if seen is None:
            continue
        holder, mtime = seen
        if holder and _holder_alive(holder, mtime):
            raise InputError(f"--name {name!r}: the experiment is being written by a running "
                             f"sweep ({describe_holder(holder)}); wait for it to end, stop it, "
                             "or choose another --name")
        note = f"taking over the lock of a sweep that is gone ({describe_holder(holder)})"
        print(note if resume or holder else "removing a leftover experiment lock", flush=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise InputError(f"--name {name!r}: could not claim {path} (another sweep keeps taking it)")


@contextlib.contextmanager
def claim(storage: Path, names, *, resume: bool):
    """Hold the locks of ``names`` in ``storage`` for the body's duration, refreshing them."""
    from search.redact import redact_argv

    command = shlex.join(redact_argv([sys.argv[0], *sys.argv[1:]]))
    held: list[Path] = []
    stop = threading.Event()
    # Directories made for the lock alone are removed with it when nothing else went there.
    made = [p for p in (storage, *storage.parents) if not p.exists()]
    storage.mkdir(parents=True, exist_ok=True)
    try:
        for n in dict.fromkeys(names):
            held.append(acquire(storage, n, resume=resume, command=command))

        def beat():
            while not stop.wait(HEARTBEAT_S):
                for p in held:
                    with contextlib.suppress(OSError):
                        os.utime(p)

        threading.Thread(target=beat, name="experiment-lock", daemon=True).start()
        yield held
    finally:
        stop.set()
        for p in held:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        for d in made:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
