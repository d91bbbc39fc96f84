"""The one shared training loop. No Ray here: it reports through one callback.

Every study supplies only a model, a loss and an evaluation; the loop owns optimisation
(AdamW, warm-up + linear decay, clipping), epochs, best-so-far tracking and timing, and what
makes a step cheap: fused AdamW, bf16 autocast and TF32 on CUDA, pinned host memory with
non-blocking copies, one host sync per epoch. ``bench/train_throughput.py`` measures it.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from models.peak_memory import PeakMemory


@dataclass
class LoopState:
    """What a checkpoint must hold besides the weights to resume exactly."""

    epoch: int = 0  # epochs completed
    best: float | None = None
    elapsed_s: float = 0.0  # training + evaluation seconds over all previous runs
    since_best: int = 0  # epochs since the best one (early stopping with patience)
    stopped: bool = False  # patience ran out, or the loss stopped being finite
    failure: str | None = None  # why training ended early with an error (non-finite loss)
    train_s_total: float = 0.0  # training seconds (no evaluation) over all epochs
    peak_mem_mb: float = 0.0  # highest per-epoch peak so far
    train_mem_mb: float = 0.0  # highest per-epoch peak above the loaded model, so far
    # CPU copies of the trainable parameters at the best epoch (only with keep_best): put
    # back into the model when training ends, so the final model is the best one.
    best_params: dict | None = None
    # Best-so-far of the other tracked evaluation metrics (``track``), by name.
    bests: dict = field(default_factory=dict)


# A key of a final evaluation's metrics: {file name: text} written beside the final weights
# (the retrain's generated summaries), not reported as a metric.
FILES = "_files"


def is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def autocast(device):
    """bf16 autocast on a GPU that has it (matmuls in bf16, reductions and the loss in fp32);
    nothing on the CPU, where bf16 matmuls are slower than fp32 on most machines."""
    if is_cuda(device) and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def enable_tf32() -> None:
    """fp32 matmuls and convolutions that stay fp32 (outside autocast) use TF32 tensor cores."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def to_device(batch: dict, device) -> dict:
    """Host batch -> device. On CUDA through pinned memory, so the copy is asynchronous and
    overlaps the previous step's kernels; on the CPU the tensors are used as they are."""
    if not is_cuda(device):
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def build_optimizer(model: torch.nn.Module, *, learning_rate: float, weight_decay: float,
                    total_steps: int, warmup_ratio: float, fused: bool = True):
    """AdamW over the trainable parameters (no decay on biases and norms), linear warm-up
    then linear decay to zero: the formula of transformers' get_linear_schedule_with_warmup,
    as a torch LambdaLR so that trials of non-HF models never import transformers.

    The fused implementation (one kernel over all parameters, on CPU and CUDA) replaces
    torch's default per-parameter loop on the CPU, which costs a Python iteration for each
    of a LoRA model's many small tensors (``fused=False``: torch's default, for comparison)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fused = fused and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=learning_rate, fused=fused or None)
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total_steps, warmup_ratio))


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """The learning rate's share at optimizer step ``step`` of ``total``: linear warm-up over
    ``warmup_ratio`` of them, then linear decay to 0 (the packed step uses it too)."""
    warmup = int(warmup_ratio * total)
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def batch_rows(batch: dict) -> int:
    """What a per-row mean loss averages over: the batch's rows."""
    return len(next(iter(batch.values())))


@dataclass(frozen=True)
class MicroBatched:
    """A loss the loop computes over chunks of at most ``rows`` rows of each batch, one
    forward and backward pass each, accumulating gradients: a pass holds a chunk's activations,
    and the optimizer step still gets the whole batch's gradient. ``weight(batch)`` counts what
    the loss averages over (rows for a per-row mean, loss-bearing tokens for a token mean):
    each chunk's loss is scaled by its share of that count, so the scaled losses (and their
    gradients) sum to the whole batch's mean. Called directly, it is the plain loss."""

    loss_fn: Callable
    rows: int
    weight: Callable[[dict], int] = batch_rows

    def __call__(self, model, batch):
        return self.loss_fn(model, batch)

    def chunks(self, batch: dict) -> list[tuple[dict, float]]:
        """(chunk, its share of the loss) for one host batch: equal chunks (split before the
        copy to the device, so counting the weights never waits for the device). Chunks that
        weigh nothing add no gradient and are left out (a token mean over none is NaN)."""
        n = -(-batch_rows(batch) // self.rows)
        if n <= 1:
            return [(batch, 1.0)]
        split = {k: torch.tensor_split(v, n) for k, v in batch.items()}
        parts = [{k: v[i] for k, v in split.items()} for i in range(n)]
        weights = [int(self.weight(p)) for p in parts]
        total = sum(weights)
        if not total:  # nothing to average over: the whole batch, as without micro-batches
            return [(batch, 1.0)]
        return [(p, w / total) for p, w in zip(parts, weights) if w]


def micro_batched(loss_fn: Callable, rows: int, weight: Callable[[dict], int] = batch_rows):
    """``loss_fn`` split into chunks of at most ``rows`` rows (0: as it is; see MicroBatched)."""
    return MicroBatched(loss_fn, rows, weight) if rows > 0 else loss_fn


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
    grad_accum: int = 1,
    patience: int | None = None,
    keep_best: bool = False,
    track: dict[str, str] | None = None,
    train_stats: Callable[[dict], dict] | None = None,
) -> LoopState:
    """Train from ``state.epoch + 1`` to ``max_epochs``; after each epoch evaluate and call
    ``report(metrics, state)`` with train_loss, the evaluation's metrics,
    ``best_<best_metric>``, epoch, elapsed_s, train_s (this epoch's training seconds),
    epoch_s (training + evaluation), peak_mem_mb, their running mean_train_s and
    max_peak_mem_mb, patience_stop and ``last_epoch`` (True on the epoch after which training
    stops).

    ``train_batches(epoch)`` yields dicts of CPU tensors; ``loss_fn(model, batch)`` returns a
    scalar; ``evaluate(model)`` returns a flat dict of floats that contains ``best_metric``.
    ``grad_accum`` micro-batches make one optimizer step (the scheduler counts steps). A
    ``MicroBatched`` loss runs each batch in chunks, accumulating their gradients (the step,
    the loss reported and the counts are the whole batch's).
    ``patience``: stop after that many epochs without a new best. ``keep_best``: when
    training ends, the trainable parameters of the best epoch are put back. ``loss_fn`` may
    return ``(loss, counts)``, a dict of count tensors summed over the epoch on the device and
    turned into training metrics by ``train_stats`` (e.g. accuracy of the training batches, as
    the model was while it trained on them: dropout on, weights moving).

    One body on purpose (~130 lines): the order of a step (forward, backward, accumulate,
    clip, step) and of an epoch's end (one host sync, evaluate, best-so-far, memory, report)
    is what every study relies on, and it reads top to bottom here; split, the shared state
    would travel through a dozen arguments.
    """
    state = state or LoopState()
    split = isinstance(loss_fn, MicroBatched)
    params = [p for p in model.parameters() if p.requires_grad]
    memory = PeakMemory(device)
    # The loaded model (and, on a CPU, the interpreter and libraries): what a method's training
    # adds above it (activations, gradients, optimizer state) is what tells methods apart.
    base_mb = memory.current_mb()
    for epoch in range(state.epoch + 1, max_epochs + 1):
        if state.stopped:
            break
        t0 = time.perf_counter()
        memory.reset()
        model.train()
        # Sum on device; .item() once per epoch avoids a host sync per step.
        loss_sum = torch.zeros((), device=device)
        counts: dict[str, torch.Tensor] = {}
        n_batches = 0
        optimizer.zero_grad(set_to_none=True)
        for batch in train_batches(epoch):
            for part, share in (loss_fn.chunks(batch) if split else [(batch, 1.0)]):
                part = to_device(part, device)
                with autocast(device):
                    loss = loss_fn(model, part)
                if isinstance(loss, tuple):
                    loss, batch_counts = loss
                    for k, v in batch_counts.items():
                        counts[k] = counts[k] + v.detach() if k in counts else v.detach()
                if share != 1.0:
                    loss = loss * share
                (loss / grad_accum if grad_accum > 1 else loss).backward()
                loss_sum += loss.detach()
            n_batches += 1
            if n_batches % grad_accum == 0:
                _step(params, optimizer, scheduler, grad_clip)
        if n_batches % grad_accum:  # the epoch's last, partial accumulation
            _step(params, optimizer, scheduler, grad_clip)
        # .item() first: on a GPU it waits for the epoch's queued kernels, so train_s is the
        # time the work took, not the time it took to queue it.
        train_loss = (loss_sum / max(n_batches, 1)).item()
        train_s = time.perf_counter() - t0
        model.eval()
        if not math.isfinite(train_loss):
            # Diverged: the weights are garbage, so do not evaluate; end the trial with a
            # clear status (its best-so-far from earlier epochs stays valid).
            state.failure = f"non-finite training loss ({train_loss}) in epoch {epoch}"
            metrics = {best_metric: float("nan"), "failure": state.failure}
        else:
            metrics = dict(evaluate(model))
            if train_stats is not None and counts:
                metrics.update(train_stats({k: float(v) for k, v in counts.items()}))
        snapshot = None
        if keep_best:
            def snapshot():
                return {n: p.detach().to("cpu", copy=True)
                        for n, p in model.named_parameters() if p.requires_grad}
        close_epoch(state, metrics, epoch=epoch, train_loss=train_loss, train_s=train_s,
                    epoch_s=time.perf_counter() - t0, peak=memory.peak_mb(), base_mb=base_mb,
                    best_metric=best_metric, mode=mode, patience=patience,
                    max_epochs=max_epochs, track=track, snapshot=snapshot)
        report(metrics, state)
    if keep_best and state.best_params:
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, v in state.best_params.items():
                named[n].copy_(v)
    return state


def close_epoch(state: LoopState, metrics: dict, *, epoch: int, train_loss: float,
                train_s: float, epoch_s: float, peak: float, base_mb: float, best_metric: str,
                mode: str, patience: int | None, max_epochs: int, track: dict | None,
                snapshot: Callable[[], dict] | None = None) -> None:
    """An epoch's end, after its evaluation: best-so-far (``snapshot()``: the trainable
    parameters to keep when this epoch is the best), patience, times and memory in ``state``;
    ``metrics`` gets what every epoch's row reports besides the evaluation (see
    ``train_loop``). Shared with the packed engine (models/packed), whose slots end epochs
    one by one."""
    value = metrics[best_metric]
    if better(value, state.best, mode):
        state.best, state.since_best = value, 0
        if snapshot is not None:
            state.best_params = snapshot()
    else:
        state.since_best += 1
    state.stopped = (patience is not None and state.since_best >= patience) or \
        state.failure is not None
    state.epoch = epoch
    state.elapsed_s += epoch_s
    state.train_s_total += train_s
    state.peak_mem_mb = max(state.peak_mem_mb, peak)
    state.train_mem_mb = max(state.train_mem_mb, max(peak - base_mb, 0.0))
    for name, direction in (track or {}).items():
        if name != best_metric:
            value = metrics.get(name, float("nan"))
            if better(value, state.bests.get(name), direction):
                state.bests[name] = value
            metrics[f"best_{name}"] = state.bests.get(name, float("nan"))
    metrics.update({
        "train_loss": train_loss,
        f"best_{best_metric}": state.best if state.best is not None else float("nan"),
        "epoch": epoch,
        "elapsed_s": state.elapsed_s,
        "train_s": train_s,
        "epoch_s": epoch_s,
        "peak_mem_mb": peak,
        "mean_train_s": state.train_s_total / epoch,
        "max_peak_mem_mb": state.peak_mem_mb,
        "train_mem_mb": max(peak - base_mb, 0.0),
        "max_train_mem_mb": state.train_mem_mb,
        "patience_stop": state.stopped and state.failure is None,
        "last_epoch": state.stopped or epoch == max_epochs,
    })


def _step(params, optimizer, scheduler, grad_clip: float) -> None:
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


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
    grad_accum: int = 1
    patience: int | None = None  # early stopping on best_metric
    keep_best: bool = False  # end training with the best epoch's trainable parameters
    # Run once after training (retrains): e.g. generation metrics too costly for every epoch.
    # Its metrics are reported in one more row, with the final model's checkpoint.
    final_evaluate: Callable[[torch.nn.Module], dict] | None = None
    # Other evaluation metrics whose best-so-far is reported ({name: "max" or "min"}).
    track: dict | None = None
    # When loss_fn returns (loss, counts): the epoch's summed counts -> training metrics
    # (classification: train_accuracy, train_mcc from the confusion counts).
    train_stats: Callable[[dict], dict] | None = None
