"""The shared trial harness: turns a study's ``setup`` into a Ray Tune function trainable.

It converts Tune's dict to the study's typed config, seeds, builds the optimizer, restores
from the trial's last checkpoint, runs ``models.loop.train_loop`` and reports each epoch to
Tune with a checkpoint (weights + optimizer/scheduler/loop state + provenance)."""
from __future__ import annotations

import gc
import json
import random
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models.dropout import use_cpu_dropout
from models.errors import ConfigError, InputError
from models.loop import FILES, LoopState, TrialSetup, build_optimizer, enable_tf32, is_cuda, train_loop

TRAINER_STATE = "trainer_state.pt"
META = "meta.json"
# Errors a retry cannot fix; everything else (a lost node, CUDA errors, crashes) is retried by
# Tune from the last checkpoint, up to --max-failures times.
NOT_RETRYABLE = (ConfigError, InputError, FileNotFoundError, NotADirectoryError, PermissionError)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    """The GPU Ray reserved for this trial, else the CPU. (A trial that reserved no GPU may
    still see the node's GPUs; it must not use them.)"""
    import ray

    return torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")


def freeze_survivors() -> None:
    """Collect, then move every object still alive (imported modules, Ray's and Tune's state)
    out of the cyclic collector's reach, so that later collections scan only what came after.
    With ray, torch and optuna imported, a full ``gc.collect()`` takes ~0.13 s on a 2-core
    machine, paid at every trial switch of a reused worker; this way only the first trial in a
    worker pays it. Frozen objects are still freed by reference counting."""
    gc.collect()
    gc.freeze()


def release() -> None:
    """Collect what the finished trial dropped and return cached CUDA blocks, so the next trial
    in this (reused) worker starts from zero allocated memory.

    cuBLAS keeps its workspaces in torch's caching allocator, one per (handle, stream), and
    they outlive the trial: on an H200 a reused worker began its next trial with 65 MiB still
    allocated and ~510 MiB reserved around them. They are freed the way torch's own CUDA
    leak check frees them, before the cache is emptied. (With that and the frames of a stopped
    trial cleared in ``run_trial``, reused-worker trials start at 0 MiB allocated and 0 MiB
    reserved.)"""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is not None:
            clear()
        torch.cuda.empty_cache()


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def report_failure(config: dict, reason: str, provenance: dict, *, epoch: int = 0) -> None:
    """End a trial once with its reason (a NaN metric row marked complete): for what a retry
    cannot fix (a bad config, a missing file, out of GPU memory), which Tune would otherwise
    retry --max-failures times."""
    from ray import tune

    tune.report({config.get("_metric", "failure_metric"): float("nan"), "epoch": epoch,
                 "failure": reason, "complete": True, "last_epoch": True,
                 "node_id": _node_id(), **provenance})


def oom_message(cfg, error: BaseException) -> str:
    """Why a trial ran out of GPU memory and what to change: its batch size and its share of
    a GPU (Ray's assignment, from --gpus-per-trial)."""
    try:
        import ray

        share = ray.get_runtime_context().get_assigned_resources().get("GPU")
    except Exception:  # noqa: BLE001  (outside Ray: no assignment to report)
        share = None
    now = f", now {share:g} GPU per trial" if share else ""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return (f"OutOfMemoryError: out of GPU memory at batch_size {cfg.batch_size}; lower the "
            "batch size (--space batch_size=...) or give each trial more of a GPU "
            f"(--gpus-per-trial{now}) ({first})")


def run_trial(config: dict, *, data, provenance: dict, config_cls, setup_fn: Callable) -> None:
    """One trial or retrain job inside Ray: config from Tune's dict, setup, restore from the
    last checkpoint, the shared loop with a checkpoint per reported epoch, and every way a
    trial ends (a bad config or missing file once, out of GPU memory with advice, stopped by
    the scheduler, diverged). One function (~110 lines) because those endings share the
    trial's state (model, optimizer, last report) and must release it in one ``finally``."""
    import logging

    from ray import tune

    # One "checkpoint created" line per epoch per trial drowns the sweep's progress table.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    # Retrain jobs arrive as {"job": {...}} (one grid point each); sweep trials arrive flat.
    config = config["job"] if set(config) == {"job"} else config
    freeze_survivors()
    try:
        cfg = config_cls.from_tune(config)
        if cfg.model.startswith(("/", ".", "~")) and not Path(cfg.model).expanduser().exists():
            raise FileNotFoundError(f"model directory {cfg.model} does not exist on this node")
        torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        device = pick_device()
        gpu = {}
        if is_cuda(device):
            enable_tf32()
            # What this worker process still holds when the trial begins: 0 unless an earlier
            # trial in the same (reused) worker left tensors behind.
            gpu = {"gpu_mem_at_start_mb": torch.cuda.memory_allocated() / 2**20,
                   "gpu_reserved_at_start_mb": torch.cuda.memory_reserved() / 2**20}
        s: TrialSetup = setup_fn(cfg, data, device)
    except NOT_RETRYABLE as e:
        # Retrying cannot fix a bad config or a missing file: end the trial once, with its
        # reason, instead of raising (which Tune would retry --max-failures times).
        report_failure(config, f"{type(e).__name__}: {e}", provenance)
        release()
        return
    optimizer, scheduler = build_optimizer(
        s.model, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        total_steps=s.steps_per_epoch * cfg.max_epochs, warmup_ratio=cfg.warmup_ratio)

    state = LoopState()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            s.load_weights(d)
            # Tensors, dicts and numbers only: nothing on shared storage runs as code.
            saved = torch.load(Path(d) / TRAINER_STATE, weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = LoopState(**saved["loop"])
            torch.set_rng_state(saved["torch_rng"])

    meta = {"config": cfg.to_dict(), "seed": cfg.seed, **provenance}
    node = _node_id()
    last: dict = {}

    def report(metrics: dict, st: LoopState, final: bool = False) -> None:
        # "complete": this row is the trial's final result (a retrain is done when it has one).
        complete = final or (bool(metrics.get("last_epoch")) and s.final_evaluate is None)
        files = metrics.pop(FILES, {})
        row = {**metrics, **s.info, **gpu, "seed": cfg.seed, "complete": complete,
               "node_id": node, **provenance}
        last.clear()
        last.update(metrics)
        with tempfile.TemporaryDirectory() as d:
            s.save_weights(d)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "loop": vars(st).copy(), "torch_rng": torch.get_rng_state()},
                       Path(d) / TRAINER_STATE)
            for name, text in files.items():
                (Path(d) / name).write_text(text)
            (Path(d) / META).write_text(json.dumps({**meta, "metrics": metrics}, indent=1,
                                                   default=str))
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))

    if device.type == "cpu" and not cfg.compile:
        # torch's CPU dropout draws a random number per element (15 % of a LoRA step);
        # compiled models get inductor's own fused random numbers instead.
        use_cpu_dropout(s.model)
    # Compiled: the same parameters behind a compiled forward (dynamic shapes: every batch
    # has its own length). Saving and loading go through the setup's own model object.
    model = torch.compile(s.model, dynamic=True) if cfg.compile else s.model
    try:
        state = train_loop(
            model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=s.loss_fn,
            train_batches=s.train_batches, evaluate=s.evaluate, max_epochs=cfg.max_epochs,
            best_metric=s.best_metric, mode=s.mode, report=report, state=state, device=device,
            grad_accum=s.grad_accum, patience=s.patience, keep_best=s.keep_best,
            track=s.track, train_stats=s.train_stats)
        if s.final_evaluate is not None:
            # One more row, for the final (best-epoch, with keep_best) model.
            model.eval()
            final = {**last, "epoch": state.epoch, "elapsed_s": state.elapsed_s,
                     "last_epoch": True}
            if state.failure is None or state.best_params is not None:  # weights worth scoring
                final.update(s.final_evaluate(model))
            report(final, state, final=True)
    except torch.OutOfMemoryError as e:
        # Out of GPU memory: the same batch on the same share of a GPU fails again, so end
        # the trial once, saying what to change (a retry would only repeat it).
        traceback.clear_frames(e.__traceback__)
        report_failure(config, oom_message(cfg, e), provenance,
                       epoch=int(last.get("epoch", 0)))
    except BaseException as e:
        # Tune ends a trial it stops (ASHA, or max_t reached at the last report) by raising
        # SystemExit inside tune.report. The traceback keeps the loop's frames, and with them
        # the model, optimizer state and last batch, alive until the exception has left this
        # function: release() below would run too early to free or uncache their GPU blocks
        # (an H200 worker began its next trial with ~450 MiB reserved). Clear those frames.
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        # Drop this frame's references (the report closure holds them too) before collecting.
        s = model = optimizer = scheduler = report = None  # noqa: F841
        release()


def trainable_for(study_name: str) -> Callable:
    """The one Ray Tune function trainable, for any registered study: the worker looks the
    study up in ``models.registry`` (its config class and setup) and runs the shared trial.
    ``data`` and ``provenance`` arrive via ``tune.with_parameters``."""

    def trainable(config: dict, data, provenance: dict) -> None:
        from models.registry import get_study

        study = get_study(study_name)
        run_trial(config, data=data, provenance=provenance, config_cls=study.config_cls,
                  setup_fn=study.setup)

    return trainable
