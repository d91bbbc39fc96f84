"""The shared trial harness: turns a study's ``setup`` into a Ray Tune function trainable.

It converts Tune's dict to the study's typed config, seeds, builds the optimizer, restores
from the trial's last checkpoint, runs ``models.loop.train_loop`` and reports each epoch to
Tune with a checkpoint (weights + optimizer/scheduler/loop state + provenance)."""
from __future__ import annotations

import gc
import json
import random
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models.loop import LoopState, TrialSetup, build_optimizer, train_loop

TRAINER_STATE = "trainer_state.pt"
META = "meta.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    """The GPU Ray reserved for this trial, else the CPU. (A trial that reserved no GPU may
    still see the node's GPUs; it must not use them.)"""
    import ray

    return torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")


def release() -> None:
    """Collect what the finished trial dropped and return cached CUDA blocks, so the next trial
    in this (reused) worker starts from zero allocated memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_trial(config: dict, *, data, provenance: dict, config_cls, setup_fn: Callable) -> None:
    import logging

    from ray import tune

    # One "checkpoint created" line per epoch per trial drowns the sweep's progress table.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    # Retrain jobs arrive as {"job": {...}} (one grid point each); sweep trials arrive flat.
    config = config["job"] if set(config) == {"job"} else config
    cfg = config_cls.from_tune(config)
    torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    device = pick_device()
    s: TrialSetup = setup_fn(cfg, data, device)
    optimizer, scheduler = build_optimizer(
        s.model, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        total_steps=s.steps_per_epoch * cfg.max_epochs, warmup_ratio=cfg.warmup_ratio)

    state = LoopState()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            s.load_weights(d)
            saved = torch.load(Path(d) / TRAINER_STATE, weights_only=False)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = LoopState(**saved["loop"])
            torch.set_rng_state(saved["torch_rng"])

    meta = {"config": cfg.to_dict(), "seed": cfg.seed, **provenance}
    last: dict = {}

    def report(metrics: dict, st: LoopState, final: bool = False) -> None:
        # "complete": this row is the trial's final result (a retrain is done when it has one).
        complete = final or (bool(metrics.get("last_epoch")) and s.final_evaluate is None)
        row = {**metrics, **s.info, "seed": cfg.seed, "complete": complete, **provenance}
        last.clear()
        last.update(metrics)
        with tempfile.TemporaryDirectory() as d:
            s.save_weights(d)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "loop": vars(st).copy(), "torch_rng": torch.get_rng_state()},
                       Path(d) / TRAINER_STATE)
            (Path(d) / META).write_text(json.dumps({**meta, "metrics": metrics}, indent=1,
                                                   default=str))
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        state = train_loop(
            model=s.model, optimizer=optimizer, scheduler=scheduler, loss_fn=s.loss_fn,
            train_batches=s.train_batches, evaluate=s.evaluate, max_epochs=cfg.max_epochs,
            best_metric=s.best_metric, mode=s.mode, report=report, state=state, device=device,
            grad_accum=s.grad_accum, patience=s.patience, keep_best=s.keep_best)
        if s.final_evaluate is not None:
            # One more row, for the final (best-epoch, with keep_best) model.
            s.model.eval()
            final = {**last, "epoch": state.epoch, "elapsed_s": state.elapsed_s,
                     **s.final_evaluate(s.model), "last_epoch": True}
            report(final, state, final=True)
    finally:
        # Drop this frame's references (the report closure holds them too) before collecting.
        s = optimizer = scheduler = report = None  # noqa: F841
        release()
