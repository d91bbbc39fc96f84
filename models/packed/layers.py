"""The pieces every packed adapter method shares: K adapters trained at once on one frozen base,
the base's matmuls run once over the concatenation of the adapters' batches, each adapter's own
path runs on its own rows, batched over adapters.

Hand-written because peft's mixed-adapter batches (``adapter_names=``) are forward-only: peft
raises in training mode. Each method's maths is peft's and lives in a file of its own
(``lora.py``, ``dora.py``, ``ia3.py``: its ``PackedLayer`` subclass and its ``PackedMethod``
entry; ``model.py`` puts the layers on a model). What is here is shared: the routing of rows to
slots, dropout per slot, the base class of a packed layer, and the classification head of its
own each adapter trains (peft's ``modules_to_save`` copy of ``score``).

Every slot's weights of one layer live in one tensor (HFTA's layout): e.g. LoRA's ``lora_A``
[C, R, in], ``lora_B`` [C, out, R], the head [C, labels, hidden], C = the capacity. So the work of
a step (forward, backward, clipping, the optimizer in ``models.packed.trainer``) is one operation
per layer whatever the number of slots: the per-operator cost that bounds a small trial on a GPU
is paid once for all of them.

Shapes: N rows in the packed batch (the adapters' batches one after another), T tokens, S
adapters taking part in this step, P = the padded rows per adapter (its largest batch).
``Routing`` carries, for one step, which rows belong to which adapter."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Routing:
    """One packed step's rows. ``slots`` [S]: the slot of each adapter in this step (None:
    every slot, in order); ``gather`` [S * P]: for each padded row, its row in the packed batch
    (padding points at row 0 and is thrown away); ``scatter`` [N]: for each packed row, its
    padded row; ``row_slot`` [N]: each row's position among the S adapters; ``dropout`` [S]:
    each one's dropout probability (None: none has dropout, or evaluation). When every adapter
    brings the same number of rows, ``gather`` and ``scatter`` are None: the packed batch is
    already [S, P] rows, and the adapters' paths read it as a view (no copy)."""

    slots: torch.Tensor | None
    count: int  # S
    gather: torch.Tensor | None
    scatter: torch.Tensor | None
    row_slot: torch.Tensor
    rows: int  # P
    dropout: torch.Tensor | None = None

    def pick(self, weights: torch.Tensor) -> torch.Tensor:
        """[C, ...] -> [S, ...]: the weights of this step's adapters."""
        return weights if self.slots is None else weights.index_select(0, self.slots)

    def per_row(self, weights: torch.Tensor) -> torch.Tensor:
        """[C, ...] -> [N, ...]: each packed row's adapter's weights."""
        return self.pick(weights).index_select(0, self.row_slot)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """[N, T, F] -> [S, P*T, F]: each adapter's rows, padded to P rows."""
        s = t if self.gather is None else t.index_select(0, self.gather)
        return s.reshape(self.count, self.rows * t.shape[1], t.shape[2])

    def join(self, t: torch.Tensor, tokens: int) -> torch.Tensor:
        """[S, P*T, F] -> [N, T, F]: the inverse of ``split`` (padding thrown away)."""
        t = t.reshape(self.count * self.rows, tokens, t.shape[-1])
        return t if self.scatter is None else t.index_select(0, self.scatter)


def routing_for(slots: list[int], sizes: list[int], device, dropout: list[float] | None = None,
                capacity: int | None = None) -> Routing:
    """The routing of a packed batch made of ``sizes[i]`` rows of adapter ``slots[i]``, in
    that order."""
    rows = max(sizes)
    gather, scatter, row_slot, start = [], [], [], 0
    for i, n in enumerate(sizes):
        gather += list(range(start, start + n)) + [0] * (rows - n)
        scatter += [i * rows + j for j in range(n)]
        row_slot += [i] * n
        start += n

    def tensor(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    p = None
    if dropout is not None and any(d > 0 for d in dropout):
        p = torch.tensor(dropout, dtype=torch.float32, device=device)
    every = capacity is not None and list(slots) == list(range(capacity))
    picked = None if every else tensor(slots)
    if len(set(sizes)) == 1:
        return Routing(picked, len(slots), None, None, tensor(row_slot), rows, p)
    return Routing(picked, len(slots), tensor(gather), tensor(scatter), tensor(row_slot), rows, p)


_LEVELS = 1 << 16


def dropout_mask(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """[S, M, F] float mask: 0, or 1/keep with probability keep = 1 - p[s] per element of
    adapter s. On the CPU the uniforms are drawn 16 bits at a time, as ``models.dropout``
    does for a single adapter (a quarter of the draws of torch's own); elsewhere torch's."""
    keep = (1.0 - p).view(-1, 1, 1)
    if x.device.type != "cpu":
        return (torch.rand_like(x) < keep).to(x.dtype) / keep
    n = x.numel()
    bits = torch.randint(-(1 << 63), (1 << 63) - 1, (-(-n // 4),), dtype=torch.int64)
    u = bits.view(torch.int16)[:n].view(x.shape)
    levels = torch.round(keep * _LEVELS)
    # An adapter without dropout (keep = 1) beside one with: its threshold, 2**15, is past
    # int16 (it would wrap to -2**15 and drop everything), so it keeps every element outright.
    threshold = (levels - (1 << 15)).clamp(max=(1 << 15) - 1).to(torch.int16)
    kept = (u < threshold).logical_or_(levels >= _LEVELS)
    return kept.to(x.dtype) * (_LEVELS / levels)


class PackedLayer(nn.Module):
    """A frozen ``nn.Linear`` (or GPT-2's ``Conv1D``) with ``capacity`` slots of one adapter
    method: the base class of each method's layer. A subclass names its slot-first trainable
    tensors in ``tensors`` (those a solo trial's AdamW does not decay, one-dimensional there,
    in ``no_decay``) and fills a slot in ``init_slot``; ``slot_views`` gives a slot's tensors at
    its own size (what a solo trial of its configuration trains, so their sizes are its
    trainable-parameter count)."""

    tensors: tuple[str, ...] = ()
    no_decay: tuple[str, ...] = ()

    def __init__(self, base: nn.Module, capacity: int, routing_box: list):
        super().__init__()
        self.base = base
        weight = base.weight
        # nn.Linear stores [out, in]; Conv1D stores [in, out].
        self.fan_in_fan_out = not isinstance(base, nn.Linear)
        self.in_features, self.out_features = (
            weight.shape[::-1] if not self.fan_in_fan_out else weight.shape)
        self.capacity = capacity
        self._routing = routing_box  # [Routing | None], shared by every packed layer

    def slot_tensor(self, *shape: int) -> nn.Parameter:
        """A zero [C, *shape] float32 parameter on the base's device."""
        return nn.Parameter(torch.zeros(self.capacity, *shape, device=self.base.weight.device,
                                        dtype=torch.float32))

    def weight_out_in(self) -> torch.Tensor:
        """The base weight as [out, in] (peft's ``transpose(weight, fan_in_fan_out)``)."""
        w = self.base.weight
        return w.t() if self.fan_in_fan_out else w

    def check(self, plan) -> None:
        """ValueError when ``plan`` (a ``SlotPlan``) does not fit this layer."""

    def init_slot(self, slot: int, generator: torch.Generator, plan) -> None:
        """A fresh adapter in ``slot`` (its tensors are zero on entry), random draws from
        ``generator`` only (seeded with the slot's seed)."""
        raise NotImplementedError

    def set_plan(self, slot: int, plan) -> None:
        """What the layer derives from ``plan`` beside the weights (e.g. LoRA's scale)."""

    def slot_views(self, slot: int, plan) -> dict[str, torch.Tensor]:
        """{tensor name: slot ``slot``'s part of it, at its own size}."""
        return {n: getattr(self, n)[slot] for n in self.tensors}


class PackedHead(nn.Module):
    """The classification head, one weight [labels, hidden] per slot (the base's head is not
    used: each adapter trains its own copy, as peft's ``modules_to_save`` does)."""

    def __init__(self, base: nn.Linear, capacity: int, routing_box: list):
        super().__init__()
        self.out_features, self.in_features = base.weight.shape
        self.has_bias = base.bias is not None
        kw = {"device": base.weight.device, "dtype": torch.float32}
        self.weight = nn.Parameter(
            torch.zeros(capacity, self.out_features, self.in_features, **kw))
        self.bias = (nn.Parameter(torch.zeros(capacity, self.out_features, **kw))
                     if self.has_bias else None)
        self._routing = routing_box

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, T, h] -> [N, T, labels]
        route: Routing = self._routing[0]
        w = route.per_row(self.weight)  # [N, labels, h]
        logits = torch.bmm(hidden.float(), w.transpose(1, 2))
        if self.has_bias:
            logits = logits + route.per_row(self.bias).unsqueeze(1)
        return logits


def linear_paths(model: nn.Module, head: str):
    """(path, module) of every Linear/Conv1D but the head: what an adapter may target."""
    for path, module in model.named_modules():
        if type(module).__name__ in ("Linear", "Conv1D") and path.split(".")[-1] != head:
            yield path, module


def host_to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``. From pinned memory, asynchronously on a GPU: a copy from pageable
    memory waits for every kernel queued before it, a host sync in every step."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
