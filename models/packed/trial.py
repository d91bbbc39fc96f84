"""A packed trial: the Tune trial of one configuration whose adapter trains in a slot of the
packed engine (``search/packing.py`` starts it). It does what ``models.trial.run_trial`` does
around the training (config from Tune's dict, a bad config ends once, a checkpoint and a row per
epoch, resume from the last checkpoint) and hands the training itself to the engine: a thin
client, so one process per trial costs no copy of the base model."""
from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

import torch

from models.loop import LoopState
from models.trial import META, NOT_RETRYABLE, report_failure

PACKED_STATE = "packed_state.pt"  # the slot's weights, AdamW state, schedule and loop state


def engine_handle(name: str, wait_s: float = 60.0):
    """The engine actor by name; while Ray restarts a dead one, waits for it."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        try:
            host = ray.get_actor(name)
            ray.get(host.ready.remote())
            return host
        except (ValueError, ray.exceptions.RayActorError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_packed_trial(config: dict, *, provenance: dict, engine: str, config_cls) -> None:
    import ray
    from ray import tune

    from models.trial import _node_id

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    config = config["job"] if set(config) == {"job"} else config
    try:
        cfg = config_cls.from_tune(config)
    except NOT_RETRYABLE as e:
        report_failure(config, f"{type(e).__name__}: {e}", provenance)
        return
    host = engine_handle(engine)
    state, loop = None, LoopState()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            # Tensors, dicts and numbers only: nothing on shared storage runs as code.
            saved = torch.load(Path(d) / PACKED_STATE, weights_only=True)
        state, loop = saved["slot"], LoopState(**saved["loop"])
    # This attempt's own name: its release at the end cannot free the slot of a later attempt
    # of the same trial (Tune's retry, or --resume) whose attach overtook it.
    owner = f"{tune.get_context().get_trial_id()}:{uuid.uuid4().hex}"
    try:
        slot = ray.get(host.attach.remote(cfg, state, owner=owner))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, NOT_RETRYABLE):  # e.g. lora_r above the engine's largest rank
            report_failure(config, f"{type(e.cause).__name__}: {e.cause}", provenance)
            return
        raise
    info = ray.get(host.describe.remote(slot))
    meta = {"config": cfg.to_dict(), "seed": cfg.seed, "packed": info, **provenance}
    node = _node_id()
    try:
        while loop.epoch < cfg.max_epochs and not loop.stopped:
            done = ray.get(host.run_epoch.remote(slot, loop))
            if done is None:  # Tune ended this trial and its slot was freed: nothing to report
                return
            metrics, state, loop = done
            row = {**metrics, "trainable_params": info["trainable_params"],
                   "total_params": info["total_params"], "packed_slots": info["capacity"],
                   "seed": cfg.seed, "complete": bool(metrics["last_epoch"]), "node_id": node,
                   **provenance}
            with tempfile.TemporaryDirectory() as d:
                torch.save({"slot": state, "loop": vars(loop).copy()}, Path(d) / PACKED_STATE)
                (Path(d) / META).write_text(json.dumps({**meta, "metrics": metrics}, indent=1,
                                                       default=str))
                tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
    finally:
        try:
            # By owner, not slot number: the driver may have freed the slot already (the trial
            # ended) and given it to the next trial. Fire and forget: a dead engine frees all.
            host.release_owner.remote(owner)
        except Exception:  # noqa: BLE001
            pass


def packed_trainable_for(study_name: str) -> Callable:
    """The Tune function trainable of a packed trial of ``study_name``; ``provenance`` and the
    engine's actor name arrive via ``tune.with_parameters``."""

    def trainable(config: dict, provenance: dict, engine: str) -> None:
        from models.registry import get_study

        run_packed_trial(config, provenance=provenance, engine=engine,
                         config_cls=get_study(study_name).config_cls)

    return trainable
