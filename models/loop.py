"""The one shared training loop. No Ray here: it reports through one callback.

Every study supplies only a model, a loss and an evaluation; the loop owns optimisation
(AdamW, warm-up + linear decay, clipping), epochs, best-so-far tracking and timing.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch


@dataclass
class LoopState:
    """What a checkpoint must hold besides the weights to resume exactly."""

    epoch: int = 0  # epochs completed
    best: float | None = None
    elapsed_s: float = 0.0  # training + evaluation seconds over all previous runs


def build_optimizer(model: torch.nn.Module, *, learning_rate: float, weight_decay: float,
                    total_steps: int, warmup_ratio: float):
    """AdamW over the trainable parameters (no decay on biases and norms), linear warm-up
    then linear decay to zero: the formula of transformers' get_linear_schedule_with_warmup,
    as a torch LambdaLR so that trials of non-HF models never import transformers."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
    )
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def better(value: float, best: float | None, mode: str) -> bool:
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def train_loop(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    train_batches: Callable[[int], Iterable[dict]],
    evaluate: Callable[[torch.nn.Module], dict],
    max_epochs: int,
    best_metric: str,
    mode: str = "max",
    report: Callable[[dict, LoopState], None],
    state: LoopState | None = None,
    device: torch.device | str = "cpu",
    grad_clip: float = 1.0,
) -> LoopState:
    """Train from ``state.epoch + 1`` to ``max_epochs``; after each epoch evaluate and call
    ``report(metrics, state)`` with train_loss, the evaluation's metrics,
    ``best_<best_metric>``, epoch and elapsed_s.

    ``train_batches(epoch)`` yields dicts of CPU tensors; ``loss_fn(model, batch)`` returns a
    scalar; ``evaluate(model)`` returns a flat dict of floats that contains ``best_metric``.
    """
    state = state or LoopState()
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(state.epoch + 1, max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        # Sum on device; .item() once per epoch avoids a host sync per step.
        loss_sum = torch.zeros((), device=device)
        n_batches = 0
        for batch in train_batches(epoch):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            n_batches += 1
        model.eval()
        metrics = dict(evaluate(model))
        value = metrics[best_metric]
        if better(value, state.best, mode):
            state.best = value
        state.epoch = epoch
        state.elapsed_s += time.perf_counter() - t0
        metrics.update({
            "train_loss": (loss_sum / max(n_batches, 1)).item(),
            f"best_{best_metric}": state.best if state.best is not None else float("nan"),
            "epoch": epoch,
            "elapsed_s": state.elapsed_s,
        })
        report(metrics, state)
    return state


@dataclass
class TrialSetup:
    """What a study hands the shared trial harness: the model and how to train, evaluate,
    save and restore it. Everything else (optimizer, schedule, reporting) is shared."""

    model: torch.nn.Module
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor]
    train_batches: Callable[[int], Iterable[dict]]
    steps_per_epoch: int
    evaluate: Callable[[torch.nn.Module], dict]
    best_metric: str
    mode: str
    save_weights: Callable[[str], None]
    load_weights: Callable[[str], None]
    info: dict  # recorded in every result row, e.g. trainable/total parameter counts
