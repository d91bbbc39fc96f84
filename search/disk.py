"""What a sweep writes, planned before it starts, and writes that leave nothing half-done.

The estimate errs high, like the memory plan's (``search/memory.py``):

- copies of study artefacts into the experiment (the smoke test's tiny model and teacher):
  their size, measured in the scratch directory they were built in;
- per sweep trial, the checkpoints Tune keeps (``SWEEP_CHECKPOINTS``): the trainable weights
  (4 bytes a parameter), AdamW's two moments (8) and the best epoch's copy (4) in the trainer
  state, plus ``CHECKPOINT_FILES`` of small files; and its result rows (``RESULT_EPOCH`` an
  epoch);
- per retrain job: Tune's one kept checkpoint and the retrained weights copied out of it;
- the tables, ``experiment.json`` and the Optuna study: ``TABLES``.

Trackers' files (TensorBoard, MLflow, W&B) are not counted: they live where each tracker puts
them. ``plan_disk`` refuses a sweep (exit 2) when the storage's free space is below the
estimate; a write that fails anyway (``ENOSPC``) ends the command with what to free and how to
go on (``search.cli``).
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from models.errors import InputError

MB = 2 ** 20
SWEEP_CHECKPOINTS = 2  # Tune's num_to_keep for sweep trials (search.sweep)
RETRAIN_CHECKPOINTS = 1  # and for retrain jobs (search.retrain)
TRAINER_BYTES = 16  # a trainable parameter in a checkpoint: weights 4, Adam moments 8, best copy 4
CHECKPOINT_FILES = 256 * 1024  # meta.json, loop state, rng, Tune's checkpoint bookkeeping
RESULT_EPOCH = 16 * 1024  # result.json / progress.csv / events of one epoch
TABLES = 8 * MB  # trials.csv, epochs.csv, experiment.json, optuna.db, Tune's state


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def sweep_bytes(plan, trainable: int) -> int:
    """What one sweep (and its retrain) writes: see the module docstring."""
    ckpt = TRAINER_BYTES * trainable + CHECKPOINT_FILES
    trial = SWEEP_CHECKPOINTS * ckpt + plan.max_epochs * RESULT_EPOCH
    jobs = plan.retrain_top_k * plan.retrain_seeds
    job = RETRAIN_CHECKPOINTS * ckpt + 4 * trainable + CHECKPOINT_FILES + plan.max_epochs * RESULT_EPOCH
    return plan.num_samples * trial + jobs * job + TABLES


def free_bytes(path: Path) -> int:
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def plan_disk(plans: list, trainable, artefacts: int, storage: Path, *,
              resume: bool, flag: str = "--storage-path") -> dict:
    """Check the storage holds what the sweeps write; InputError when not.
    ``trainable(study name, space)``: the largest trainable-parameter count a trial can draw
    (None: small files only). -> what was planned, for the plan and experiment.json."""
    need = artefacts if not resume else 0
    for plan in plans:
        need += sweep_bytes(plan, trainable(plan.study.name, plan.space) if trainable else 0)
    free = free_bytes(storage)
    basis = (f"{sum(p.num_samples for p in plans)} trials x {SWEEP_CHECKPOINTS} checkpoints, "
             f"{sum(p.retrain_top_k * p.retrain_seeds for p in plans)} retrain jobs"
             + (f", {artefacts / MB:.1f} MB of study files" if artefacts and not resume else ""))
    if need > free:
        raise InputError(
            f"{flag} {str(storage)!r}: the sweep writes about {need / MB:,.0f} MB ({basis}) but "
            f"only {free / MB:,.0f} MB are free there; free some space, or choose another "
            f"{flag}, or lower --num-samples / --retrain-top-k / --retrain-seeds")
    return {"need_mb": round(need / MB, 1), "free_mb": round(free / MB), "basis": basis}


def is_disk_full(e: BaseException) -> bool:
    """``e`` or an error in its chain is a full disk or an exceeded quota."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):  # wrapped by Ray or pyarrow as text
            return True
        e = e.__cause__ or e.__context__
    return False


def write_text(path: Path, text: str) -> None:
    """Write whole or not at all: a temporary file beside it, then a rename."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory whole or not at all (a partial copy is removed): ``dst`` exists only
    complete. An existing ``dst`` is kept (resuming: the same artefacts)."""
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        tmp.rename(dst)
    except shutil.Error as e:  # copytree gathers its files' errors into one, without errno
        if is_disk_full(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst)) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
