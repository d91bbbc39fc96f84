"""K LoRA adapters trained at once on one frozen base: the base's matmuls run once over the
concatenation of the adapters' batches, each adapter's low-rank path runs on its own rows,
batched over adapters (ranks padded to the largest, with a mask).

Hand-written because peft's mixed-adapter batches (``adapter_names=``) are forward-only: peft
raises in training mode. The maths per adapter is peft's LoRA: ``base(x) + B(A(dropout(x))) *
alpha / r`` on the targeted layers, and a classification head of its own (peft's
``modules_to_save`` copy of ``score``).

Every slot's weights of one layer live in one tensor (HFTA's layout): ``lora_A`` [C, R, in],
``lora_B`` [C, out, R], the head [C, labels, hidden], C = the capacity. So the work of a step
(forward, backward, clipping, the optimizer in ``models.packed.trainer``) is one operation per
layer whatever the number of slots: the per-operator cost that bounds a small trial on a GPU is
paid once for all of them.

Shapes: N rows in the packed batch (the adapters' batches one after another), T tokens, S
adapters taking part in this step, R = the largest rank, P = the padded rows per adapter (its
largest batch). ``Routing`` carries, for one step, which rows belong to which adapter."""
from __future__ import annotations

import math
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
    return (u < (levels - (1 << 15)).to(torch.int16)).to(x.dtype) * (_LEVELS / levels)


class PackedLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (or GPT-2's ``Conv1D``) plus one LoRA pair per slot.

    ``lora_A`` [C, R, in] and ``lora_B`` [C, out, R]; a slot of rank r < R has zero rows in
    A and zero columns in B past r, and its scale-and-mask ``scale[k]`` [R] is alpha / r over
    the first r entries and 0 after them, so those stay zero (their gradients are zero)."""

    def __init__(self, base: nn.Module, capacity: int, max_rank: int, routing_box: list):
        super().__init__()
        self.base = base
        weight = base.weight
        # nn.Linear stores [out, in]; Conv1D stores [in, out].
        self.fan_in_fan_out = not isinstance(base, nn.Linear)
        self.in_features, self.out_features = (
            weight.shape[::-1] if not self.fan_in_fan_out else weight.shape)
        kw = {"device": weight.device, "dtype": torch.float32}
        self.lora_A = nn.Parameter(torch.zeros(capacity, max_rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(capacity, self.out_features, max_rank, **kw))
        self.register_buffer("scale", torch.zeros(capacity, max_rank, **kw), persistent=False)
        self._routing = routing_box  # [Routing | None], shared by every packed layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        route: Routing | None = self._routing[0]
        if route is None:
            return y
        t, s = x.shape[1], route.count
        # [S, P*T, in]: each adapter's rows, padded to P rows.
        xs = x if route.gather is None else x.index_select(0, route.gather)
        xs = xs.reshape(s, route.rows * t, self.in_features)
        if route.dropout is not None and self.training:
            xs = xs * dropout_mask(xs, route.dropout)
        a, b = route.pick(self.lora_A), route.pick(self.lora_B)  # [S, R, in], [S, out, R]
        scale = route.pick(self.scale).unsqueeze(1)  # [S, 1, R]
        h = torch.bmm(xs.to(a.dtype), a.transpose(1, 2)) * scale  # [S, P*T, R]
        delta = torch.bmm(h, b.transpose(1, 2))  # [S, P*T, out]
        delta = delta.reshape(s * route.rows, t, self.out_features)
        if route.scatter is not None:
            delta = delta.index_select(0, route.scatter)
        return y + delta.to(y.dtype)


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
        w = route.pick(self.weight).index_select(0, route.row_slot)  # [N, labels, h]
        logits = torch.bmm(hidden.float(), w.transpose(1, 2))
        if self.has_bias:
            logits = logits + route.pick(self.bias).index_select(0, route.row_slot).unsqueeze(1)
        return logits


def _targets(model: nn.Module, names: list[str] | str | None, head: str) -> list[str]:
    """Module paths LoRA adapts, matched as peft matches a list of names (the whole path or
    its last part(s)); "all-linear": every Linear/Conv1D but the head."""
    found = []
    for path, module in model.named_modules():
        if type(module).__name__ not in ("Linear", "Conv1D") or path.split(".")[-1] == head:
            continue
        if names == "all-linear" or any(path == n or path.endswith("." + n) for n in names):
            found.append(path)
    return found


class PackedLoRA(nn.Module):
    """A sequence classifier whose targeted layers carry ``capacity`` LoRA slots and whose head
    is one per slot. ``set_routing`` before each forward says which rows go to which slot."""

    def __init__(self, classifier: nn.Module, *, capacity: int, max_rank: int,
                 target_modules: list[str] | str, head: str = "score"):
        super().__init__()
        for p in classifier.parameters():
            p.requires_grad_(False)
        self.routing_box: list = [None]
        self.capacity, self.max_rank = capacity, max_rank
        paths = _targets(classifier, target_modules, head)
        if not paths:
            raise ValueError(f"no layer of the model matches target_modules {target_modules!r}")
        self.layers: dict[str, PackedLoRALinear] = {}
        for path in paths:
            parent_path, _, leaf = path.rpartition(".")
            parent = classifier.get_submodule(parent_path) if parent_path else classifier
            layer = PackedLoRALinear(getattr(parent, leaf), capacity, max_rank, self.routing_box)
            setattr(parent, leaf, layer)
            self.layers[path] = layer
        self.head = PackedHead(getattr(classifier, head), capacity, self.routing_box)
        setattr(classifier, head, self.head)
        self.classifier = classifier

    def set_routing(self, routing: Routing | None) -> None:
        self.routing_box[0] = routing

    def forward(self, **batch):
        return self.classifier(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits

    def slotted(self) -> dict[str, nn.Parameter]:
        """Every trainable tensor, [C, ...] (slot first), by name."""
        out = {}
        for path, layer in self.layers.items():
            out[f"{path}.lora_A"], out[f"{path}.lora_B"] = layer.lora_A, layer.lora_B
        out["head.weight"] = self.head.weight
        if self.head.bias is not None:
            out["head.bias"] = self.head.bias
        return out

    @torch.no_grad()
    def init_slot(self, slot: int, *, rank: int, alpha: float, seed: int,
                  init_std: float) -> None:
        """Fresh adapter in ``slot``, drawn from a generator seeded with ``seed`` alone (so a
        slot's start does not depend on which other slots are in use): the head ~ N(0,
        init_std) (transformers' initialisation of a new head), A as peft initialises it
        (kaiming-uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), B = 0."""
        if not 1 <= rank <= self.max_rank:
            raise ValueError(f"lora_r {rank} is outside 1..{self.max_rank} (the packed maximum)")
        g = torch.Generator().manual_seed(seed)
        w = self.head.weight[slot]
        w.copy_(torch.randn(w.shape, generator=g) * init_std)
        if self.head.bias is not None:
            self.head.bias[slot].zero_()
        for layer in self.layers.values():
            bound = 1.0 / math.sqrt(layer.in_features)
            a = layer.lora_A[slot]
            a.zero_()
            a[:rank].copy_(torch.rand((rank, layer.in_features), generator=g) * 2 * bound - bound)
            layer.lora_B[slot].zero_()
            self._set_scale(layer, slot, rank, alpha)

    @staticmethod
    def _set_scale(layer: PackedLoRALinear, slot: int, rank: int, alpha: float) -> None:
        layer.scale[slot].zero_()
        layer.scale[slot, :rank] = alpha / rank

    def slot_state(self, slot: int, rank: int) -> dict[str, torch.Tensor]:
        """Slot ``slot``'s weights at their own rank (CPU copies): {path.lora_A: [r, in],
        path.lora_B: [out, r], head.weight, head.bias}."""
        out = {}
        for name, p in self.slotted().items():
            v = p[slot]
            v = v[:rank] if name.endswith("lora_A") else v[:, :rank] if name.endswith("lora_B") else v
            out[name] = v.detach().cpu().clone()
        return out

    @torch.no_grad()
    def load_slot(self, slot: int, state: dict[str, torch.Tensor], *, rank: int,
                  alpha: float) -> None:
        for name, p in self.slotted().items():
            p[slot].zero_()
            v = p[slot]
            v = v[:rank] if name.endswith("lora_A") else v[:, :rank] if name.endswith("lora_B") else v
            v.copy_(state[name])
        for layer in self.layers.values():
            self._set_scale(layer, slot, rank, alpha)
