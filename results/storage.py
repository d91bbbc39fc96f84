"""Where experiments live: a local directory, or cloud storage (``s3://``, ``gs://``, any URI
pyarrow opens) with a local mirror on the driver.

With a URI, Ray Tune writes trial results and checkpoints straight to the bucket (every node
reaches it). The driver's own files (experiment.json, optuna.db, trials.csv, epochs.csv, the
retrain tables and retrained models, reports) are written in the mirror and pushed to the
bucket; the Tune files they are built from are pulled into the mirror first, without
checkpoints. Credentials come from the environment as usual for pyarrow (AWS_* variables,
~/.aws, instance roles; GOOGLE_APPLICATION_CREDENTIALS). Query parameters pyarrow understands
pass through, e.g. ``s3://bucket/sweeps?endpoint_override=minio:9000&scheme=http``."""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from models.errors import InputError

# Files and folders in an experiment directory that Ray Tune writes (they are never pushed
# from a mirror, whose copies may be stale).
_TUNE_OWNED = re.compile(r"^(trial_|experiment_state|basic-variant-state|searcher-state|"
                         r"tuner\.pkl|retrain$)")
_CHECKPOINT = re.compile(r"(^|/)checkpoint_\d+(/|$)")


def is_uri(path: str) -> bool:
    return "://" in str(path)


def default_mirror(uri: str) -> Path:
    """~/.cache/sweeps-mirror/<scheme>/<bucket>/<path> (query string left out)."""
    scheme, rest = uri.split("://", 1)
    rest = rest.split("?", 1)[0].strip("/")
    safe = re.sub(r"[^A-Za-z0-9._/-]", "_", rest)
    return Path.home() / ".cache" / "sweeps-mirror" / scheme / safe


@dataclass
class Remote:
    """A cloud location: the pyarrow file system and the path in it (``bucket/prefix``)."""
    uri: str
    fs: object  # pyarrow.fs.FileSystem
    path: str

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self.join(*parts)).type != fs.FileType.NotFound

    def push(self, local: Path, *parts: str, skip=None) -> int:
        """Copy ``local`` (a file or a tree) to ``<path>/<parts>``; returns files copied."""
        if local.is_file():
            self.fs.create_dir(self.join(*parts[:-1]) if len(parts) > 1 else self.path,
                               recursive=True)
            with local.open("rb") as src, self.fs.open_output_stream(self.join(*parts)) as dst:
                dst.write(src.read())
            return 1
        n = 0
        for f in sorted(local.rglob("*")):
            rel = f.relative_to(local).as_posix()
            if f.is_file() and not (skip and skip(rel)):
                n += self.push(f, *parts, *rel.split("/"))
        return n

    def pull(self, local: Path, *parts: str, skip=None) -> int:
        """Copy ``<path>/<parts>`` (a file or a tree) into ``local``; returns files copied."""
        from pyarrow import fs

        base = self.join(*parts)
        info = self.fs.get_file_info(base)
        if info.type == fs.FileType.NotFound:
            return 0
        if info.type == fs.FileType.File:
            files = [info]
        else:
            files = [i for i in self.fs.get_file_info(fs.FileSelector(base, recursive=True))
                     if i.type == fs.FileType.File]
        n = 0
        root = local.absolute()
        for i in files:
            rel = i.path[len(base):].lstrip("/")
            if skip and skip(rel):
                continue
            target = local / rel if rel else local
            # A key is any string: one with ".." would land outside the mirror.
            if ".." in rel.split("/") or not os.path.normpath(target.absolute()).startswith(
                    str(root)):
                raise InputError(f"{self.uri.split('?', 1)[0]}: refusing key {i.path!r}, whose "
                                 f"path leaves the local mirror {local}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(i.path) as src:
                target.write_bytes(src.read())
            n += 1
        return n


def open_remote(uri: str, flag: str = "--storage-path", probe: bool = True) -> Remote:
    """The URI's file system, checked by writing and deleting a probe file (so that a wrong
    bucket, missing credentials or no network fail before any work starts)."""
    try:
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(uri)
    except Exception as e:  # ArrowInvalid (unknown scheme, bad query), ImportError
        raise InputError(f"{flag} {uri!r}: not a storage URI pyarrow can open "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); expected e.g. "
                         "s3://bucket/path or gs://bucket/path") from None
    remote = Remote(uri, filesystem, path.rstrip("/"))
    if probe:
        name = f".write-probe-{uuid.uuid4().hex[:8]}"
        try:
            filesystem.create_dir(remote.path, recursive=True)
            with filesystem.open_output_stream(remote.join(name)) as out:
                out.write(b"probe")
            filesystem.delete_file(remote.join(name))
        except Exception as e:  # OSError from the store: no bucket, denied, unreachable
            raise InputError(f"{flag} {uri!r}: not writable ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:240]})") from None
    return remote


def is_tune_owned(rel: str) -> bool:
    return bool(_TUNE_OWNED.match(rel.split("/", 1)[0]))


def is_checkpoint(rel: str) -> bool:
    return bool(_CHECKPOINT.search(rel))


def pull_tune_files(remote: Remote, name: str, local: Path) -> int:
    """Tune's files of experiment ``name`` (trial results, experiment state), without
    checkpoints, into the mirror: the tables are built from them."""
    return remote.pull(local, name, skip=lambda rel: is_checkpoint(rel) or not is_tune_owned(rel))


def pull_own_files(remote: Remote, name: str, local: Path) -> int:
    """The driver's own files the mirror lacks (resuming on another machine): retrained models
    (a rerun skips those), optuna.db, experiment.json. Files present locally are newer."""
    return remote.pull(local, name, skip=lambda rel: is_tune_owned(rel) or (local / rel).exists())


def push_own_files(remote: Remote, name: str, local: Path) -> int:
    """The driver's own files of experiment ``name`` (not Tune's) from the mirror to the bucket."""
    if not local.exists():
        return 0
    return remote.push(local, name, skip=is_tune_owned)


def display(remote: Remote | None, local: Path, name: str = "") -> str:
    """How an experiment's location is shown: the URI (query left out) and its mirror."""
    if remote is None:
        return str(local / name if name else local)
    base = remote.uri.split("?", 1)[0].rstrip("/")
    return f"{base}/{name} (mirror: {local / name})" if name else f"{base} (mirror: {local})"
