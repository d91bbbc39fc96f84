"""Memory per trial, planned before any trial starts: an estimate of a trial process's peak
from the model's shape and the largest batch the space can draw (or ``--memory-per-trial``),
handed to Ray as the trial's ``memory`` resource, so that no more trials run at once than
the machine (or cluster) holds.

The estimate is deliberately simple and errs high. Its per-token activation bytes and the
share gradient checkpointing keeps were fitted to peaks measured by
``bench/summarize_memory.py`` (the README has the figures); the measured peak of every trial
is in ``epochs.csv`` (``peak_mem_mb``).
Terms (float32 on a CPU, as trials train there; on a GPU the same bytes are a safe upper
bound of the host side):

- the worker process itself (Python, torch, transformers, peft, Ray): ``PROCESS``;
- the weights (4 bytes a parameter) and, for the trainable ones, gradient, two Adam moments
  and the best-epoch copy (16 bytes);
- activations kept for the backward pass: ``ACT_BYTES`` x hidden size a token and layer. The
  textbook count (~34 values a token and layer in half precision) is far too low here: a
  Llama MLP is 2.7x wider with a gate, every adapted projection keeps its dropout output,
  and with a padding mask CPU attention takes the math path that keeps the probabilities;
  with gradient checkpointing ``CKPT_SHARE`` of that stays (measured, not derived);
- the LM head's logits where a loss reads them: logits, their float32 copy and gradient.

A plan whose largest batch does not fit in what is available is not refused at once:
``fit_batch`` finds the fewest equal micro-batches that fit (the loop accumulates their
gradients, so each optimizer step is the whole batch's), then adds gradient checkpointing
where the study has it; only a trial that does not fit even then is refused.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

GIB = 2 ** 30
PROCESS = int(0.8 * GIB)
ACT_BYTES = 190  # bytes a token, layer and hidden unit (fitted, see the module docstring)
CKPT_SHARE = 0.55  # of those activations, what a checkpointed step still peaks at (fitted)
HEADROOM = 1.15  # allocator fragmentation and what the terms leave out
# A packed trial's own process, a thin client of the engine (Ray's worker, Tune, and torch to
# write its checkpoint): its private memory, measured in packed SmolLM2 sweeps (README).
PACKED_CLIENT = int(0.3 * GIB)


@dataclass(frozen=True)
class Estimate:
    bytes: int
    basis: str  # how it was arrived at, for the printed plan and experiment.json

    @property
    def gib(self) -> float:
        return self.bytes / GIB


def model_shape(model_dir: str) -> dict:
    """hidden size, layers and vocabulary of a saved model (GPT-2 and Llama names)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    pick = lambda *names: next((getattr(c, n) for n in names if getattr(c, n, None)), 0)  # noqa: E731
    return {"hidden": int(pick("hidden_size", "n_embd", "d_model")),
            "layers": int(pick("num_hidden_layers", "n_layer", "num_layers")),
            "vocab": int(pick("vocab_size"))}


def estimate(*, total_params: int, trainable_params: int, batch_size: int, tokens: int,
             hidden: int, layers: int, vocab: int = 0, loss_positions: int = 0,
             checkpointing: bool = False) -> Estimate:
    """Peak bytes of one trial process training a transformer: see the module docstring.
    ``loss_positions``: positions a batch row sends through the LM head (0: a classifier)."""
    weights = 4 * total_params + 16 * trainable_params
    acts = ACT_BYTES * batch_size * tokens * hidden * layers * (CKPT_SHARE if checkpointing else 1)
    logits = 3 * 4 * batch_size * loss_positions * vocab
    total = int(HEADROOM * (PROCESS + weights + acts + logits))
    basis = (f"estimated: process {PROCESS / GIB:.1f} + weights {weights / GIB:.2f} + "
             f"activations {acts / GIB:.2f} (batch {batch_size} x {tokens} tokens"
             f"{', checkpointed' if checkpointing else ''}) + logits {logits / GIB:.2f} GiB, "
             f"x {HEADROOM}")
    return Estimate(total, basis)


def packed_estimate(*, k: int, total_params: int, slot_params: int, batch_size: int,
                    tokens: int, hidden: int, layers: int, vocab: int = 0) -> Estimate:
    """Peak bytes of one process training ``k`` packed adapters (models/packed): the process
    and the frozen base once (``total_params``: the base's), each slot's ``slot_params``
    (padded to the largest rank) with gradient and AdamW moments, and the activations of the
    k batches side by side."""
    del vocab  # a classifier sends no row through an LM head
    one = estimate(total_params=total_params + k * slot_params, trainable_params=k * slot_params,
                   batch_size=k * batch_size, tokens=tokens, hidden=hidden, layers=layers)
    return Estimate(one.bytes, f"{k} packed trials: {one.basis}")


def largest(space: dict, fixed: dict, name: str, default: int) -> int:
    """The largest value ``name`` takes in a sweep: its space dimension's top, or fixed."""
    if name in space:
        return int(max(space[name].edges()))
    return int(fixed.get(name, default))


def largest_batch(study, space: dict, fixed: dict) -> int:
    """The largest batch a trial of ``study`` draws: the space's, the fixed config's, or the
    config's default."""
    default = next(f.default for f in dataclasses.fields(study.config_cls)
                   if f.name == "batch_size")
    return largest(space, fixed, "batch_size", default)


def _micro_batch_sizes(batch: int):
    """Rows a pass may hold, largest first: the batch in 1, 2, 3, ... equal chunks (the fewest
    passes for each size; a chunk of 5 beside one of 3 would hold more than two of 4)."""
    last = None
    for parts in range(1, batch + 1):
        rows = -(-batch // parts)
        if rows != last:
            yield rows
        last = rows


def fit_batch(study, space: dict, fixed: dict, estimate_fn, available: int
              ) -> tuple[Estimate, dict]:
    """The estimate of a trial as planned and, when that exceeds ``available`` bytes, of the
    least change that fits: the largest batch split into the fewest equal micro-batches
    (``micro_batch_size``: gradients accumulate over them, the optimizer steps stay the whole
    batch's), then, where the study has it, gradient checkpointing with the fewest micro-batches.
    ``estimate_fn(study name, space, fixed)`` is the study's (``Prepared.memory``); it is asked
    again with the micro-batch as a fixed ``batch_size``. -> (estimate, changes to the fixed
    config); when nothing fits, the last (smallest) try, or the plan's own estimate with no
    changes when the batch does not drive the estimate."""
    est = estimate_fn(study.name, space, fixed)
    fields = study.config_cls.field_names()
    if est.bytes <= available or "micro_batch_size" not in fields:
        return est, {}
    batch = largest_batch(study, space, fixed)
    rest = {k: v for k, v in space.items() if k != "batch_size"}
    ckpt = bool(fixed.get("gradient_checkpointing"))
    options = [ckpt] + ([True] if not ckpt and "gradient_checkpointing" in fields
                        and "gradient_checkpointing" not in space else [])
    tried = est, {}
    for checkpointing in options:
        for rows in _micro_batch_sizes(batch):
            if rows == batch and checkpointing == ckpt:
                continue  # the plan as it is: estimated above
            changes = {**({"micro_batch_size": rows} if rows < batch else {}),
                       **({"gradient_checkpointing": True} if checkpointing != ckpt else {})}
            probe = {**fixed, "batch_size": rows, "gradient_checkpointing": checkpointing}
            tried = estimate_fn(study.name, rest, probe), changes
            if tried[0].bytes <= available:
                return tried
    return tried if tried[0].bytes < est.bytes else (est, {})


def available_bytes(address: str | None) -> int:
    """Memory trials may use: the cluster's ``memory`` resource, or this machine's available
    memory (what Ray's own default resource is taken from)."""
    if address:
        import ray

        return int(ray.cluster_resources().get("memory", 0))
    import psutil

    return int(psutil.virtual_memory().available * 0.9)
