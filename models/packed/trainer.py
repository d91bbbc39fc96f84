"""The packed step: one optimizer step for every adapter that has a batch, on one shared base.

Each slot is one trial's configuration: its own batches (batch size, seed, data order), learning
rate and schedule, weight decay, its adapter's own hyperparameters (LoRA's and DoRA's rank,
alpha and dropout), gradient clipping and AdamW state. A slot's losses equal the same
configuration trained alone with ``models.loop.train_loop`` (``tests/test_packed.py``,
``tests/test_packed_methods.py``): the step is that loop's step, done for S adapters at once,
whatever the adapter method (``models.packed.model``).

The optimizer is AdamW written over the slot-first tensors of ``models.packed.model`` (one
tensor per layer for all slots), with the learning rate, weight decay and step count a vector
over slots: torch's AdamW takes one learning rate per parameter group, and a group per slot
would cost operations per slot and parameter. Its arithmetic is torch's AdamW's (decoupled
decay, bias corrections per slot; no decay on what ``build_optimizer`` does not decay); a slot
without a batch this step is left as it is.

Each slot runs its own epochs: when its batches run out, ``step`` hands it back as finished
(the caller evaluates and reports it, then calls ``start_epoch`` or ``release``); the other
slots train on meanwhile."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from models.loop import autocast, lr_factor, to_device
from models.cola_adapter import INIT_STD
from models.packed.layers import host_to_device, routing_for
from models.packed.model import PackedModel
from models.packed.static import StaticShapes, static_batch, static_routing

BETAS, EPS = (0.9, 0.999), 1e-8  # torch's AdamW defaults, as models.loop.build_optimizer uses


@dataclass(kw_only=True)
class SlotPlan:
    """What the packed step needs of one trial's configuration: its optimizer and schedule, and
    what its adapter's method takes (``PackedMethod.plan_args``: LoRA's and DoRA's rank, alpha
    and dropout; IA3 takes none of them)."""

    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    total_steps: int
    seed: int
    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0


@dataclass
class _Slot:
    plan: SlotPlan
    batches: Iterator[dict] | None = None
    step: int = 0  # optimizer steps taken (the schedule's position)
    loss_sum: torch.Tensor | None = None
    counts: torch.Tensor | None = None  # [4] tp, fp, tn, fn of the epoch's training batches
    n_batches: int = 0
    started: float = field(default_factory=time.perf_counter)


class PackedTrainer:
    """``model`` (a ``PackedModel``) and its slots on ``device``; ``pad_id``: the tokenizer's.
    ``static``: every step in one of its shapes (``models.packed.static``); ``compile``: the
    model's forward (and so its backward) through ``torch.compile`` with static shapes, one
    graph per length bucket (``backend``: torch.compile's, default inductor)."""

    def __init__(self, model: PackedModel, *, device, pad_id: int, init_std: float = INIT_STD,
                 grad_clip: float = 1.0, static: StaticShapes | None = None,
                 compile: bool = False, backend: str | None = None):
        self.model, self.device, self.pad_id = model, device, pad_id
        self.static = static
        if compile and static is None:
            raise ValueError("a compiled packed step needs static shapes")
        # On a GPU, CUDA graphs (one replay a step); elsewhere the default (inductor).
        how = ({"backend": backend} if backend else
               {"mode": "reduce-overhead"} if torch.device(device).type == "cuda" else {})
        self.forward = torch.compile(model, dynamic=False, **how) if compile else model
        cap = model.capacity
        # [capacity x rows]: each static row's slot (constant: built once)
        self.row_slot = (None if static is None else
                         torch.arange(cap, device=device).repeat_interleave(static.rows))
        self.init_std, self.grad_clip = init_std, grad_clip
        self.slots: dict[int, _Slot] = {}
        self.last_losses: dict[int, torch.Tensor] = {}  # slot -> the last step's loss
        self.params = model.slotted()
        self.decayed = {n: n not in model.no_decay() for n in self.params}
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.adam_steps = torch.zeros(cap, dtype=torch.float64)  # per slot, on the host

    def free_slots(self) -> list[int]:
        return [k for k in range(self.model.capacity) if k not in self.slots]

    @torch.no_grad()
    def attach(self, plan: SlotPlan, state: dict | None = None) -> int:
        """A fresh adapter (or ``state``, from ``export``) in a free slot; -> the slot."""
        slot = self.free_slots()[0]
        if state is None:
            self.model.init_slot(slot, plan, init_std=self.init_std)
            for n in self.params:
                self.exp_avg[n][slot].zero_()
                self.exp_avg_sq[n][slot].zero_()
            self.adam_steps[slot] = 0
            step = 0
        else:
            self.model.load_slot(slot, state["weights"], plan)
            for n in self.params:
                self.exp_avg[n][slot].copy_(state["adam"]["exp_avg"][n])
                self.exp_avg_sq[n][slot].copy_(state["adam"]["exp_avg_sq"][n])
            self.adam_steps[slot] = float(state["adam"]["step"])
            step = state["step"]
        self.slots[slot] = _Slot(plan, step=step)
        return slot

    def release(self, slot: int) -> None:
        self.slots.pop(slot, None)

    def export(self, slot: int) -> dict:
        """What resumes the slot exactly: weights (at the slot's own size), AdamW state, the
        schedule's position (padded to the engine's largest rank: the AdamW state of padding is
        zero)."""
        s = self.slots[slot]
        return {"weights": self.model.slot_state(slot, s.plan),
                "adam": {"exp_avg": {n: v[slot].cpu().clone() for n, v in self.exp_avg.items()},
                         "exp_avg_sq": {n: v[slot].cpu().clone()
                                        for n, v in self.exp_avg_sq.items()},
                         "step": float(self.adam_steps[slot])},
                "step": s.step}

    def start_epoch(self, slot: int, batches: Iterator[dict]) -> None:
        s = self.slots[slot]
        s.batches, s.n_batches, s.started = iter(batches), 0, time.perf_counter()
        s.loss_sum = torch.zeros((), device=self.device)
        s.counts = torch.zeros(4, device=self.device)

    def step(self) -> list[int]:
        """One packed step; -> the slots whose epoch ended (no batch was left for them)."""
        taking, batches, ended = [], [], []
        for k in sorted(self.slots):
            s = self.slots[k]
            if s.batches is None:
                continue
            batch = next(s.batches, None)
            if batch is None:
                s.batches = None
                ended.append(k)
            else:
                taking.append(k)
                batches.append(batch)
        if taking:
            self._train(taking, batches)
        return ended

    def epoch_stats(self, slot: int) -> dict:
        """The finished epoch's mean training loss and confusion counts (one host sync)."""
        s = self.slots[slot]
        tp, fp, tn, fn = s.counts.tolist()
        return {"train_loss": (s.loss_sum / max(s.n_batches, 1)).item(),
                "counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
                "train_s": time.perf_counter() - s.started}

    def _train(self, taking: list[int], batches: list[dict]) -> None:
        losses, counts = (self._losses(taking, batches) if self.static is None
                          else self._static_losses(taking, batches))
        losses.sum().backward()
        self.last_losses = dict(zip(taking, losses.detach()))
        lr = torch.zeros(self.model.capacity, dtype=torch.float64)
        decay = torch.zeros(self.model.capacity, dtype=torch.float64)
        for i, k in enumerate(taking):
            s = self.slots[k]
            s.loss_sum += losses[i].detach()
            s.counts += counts[i]
            s.n_batches += 1
            lr[k] = s.plan.learning_rate * lr_factor(s.step, s.plan.total_steps,
                                                     s.plan.warmup_ratio)
            decay[k] = s.plan.weight_decay
            s.step += 1
        active = torch.zeros(self.model.capacity, dtype=torch.bool)
        active[taking] = True
        self._clip(active)
        self._adamw(active, lr, decay)
        for p in self.params.values():
            p.grad = None

    def _logits(self, packed: dict, route) -> torch.Tensor:
        self.model.train()
        self.model.set_routing(route)
        try:
            with autocast(self.device):
                return self.forward(**packed)
        finally:
            self.model.set_routing(None)

    def _losses(self, taking: list[int], batches: list[dict]):
        """-> ([S] each taking slot's mean loss over its rows, [S, 4] its confusion counts)."""
        packed = to_device(pack_batches(batches, self.pad_id), self.device)
        sizes = [len(b["labels"]) for b in batches]
        route = routing_for(taking, sizes, self.device,
                            [self.slots[k].plan.dropout for k in taking],
                            capacity=self.model.capacity)
        logits = self._logits(packed, route)
        labels = packed["labels"]
        rows = F.cross_entropy(logits.float(), labels, reduction="none")  # [N]
        n = torch.tensor(sizes, device=rows.device, dtype=rows.dtype)
        losses = torch.zeros(len(taking), device=rows.device).index_add_(
            0, route.row_slot, rows) / n  # [S]: each slot's mean over its rows
        counts = _confusion(logits.detach().argmax(-1), labels, route.row_slot, len(taking))
        return losses, counts

    def _static_losses(self, taking: list[int], batches: list[dict]):
        """``_losses`` in a static shape: every slot's rows, padding weighing 0."""
        cap = self.model.capacity
        packed, weights = static_batch(self.static, cap, dict(zip(taking, batches)),
                                       self.pad_id, self.device)
        drop = [self.slots[k].plan.dropout if k in taking else 0.0 for k in range(cap)]
        p = (host_to_device(torch.tensor(drop, dtype=torch.float32), self.device)
             if any(d > 0 for d in drop) else None)
        logits = self._logits(packed, static_routing(self.static, cap, p, self.row_slot))
        labels = packed["labels"]
        rows = F.cross_entropy(logits.float(), labels, reduction="none") * weights
        every = torch.zeros(cap, device=rows.device).index_add_(0, self.row_slot, rows)
        counts = _confusion(logits.detach().argmax(-1), labels, self.row_slot, cap,
                            real=weights > 0)
        pick = host_to_device(torch.tensor(taking), rows.device)
        return every.index_select(0, pick), counts.index_select(0, pick)

    @torch.no_grad()
    def _clip(self, active: torch.Tensor) -> None:
        """Each slot's gradient clipped to ``grad_clip`` by its own total norm, as
        ``torch.nn.utils.clip_grad_norm_`` clips one trial's (max_norm / (norm + 1e-6),
        capped at 1)."""
        sq = None
        for p in self.params.values():
            part = p.grad.square().flatten(1).sum(1)  # [C]
            sq = part if sq is None else sq + part
        coef = (self.grad_clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for p in self.params.values():
            p.grad.mul_(coef.view(-1, *([1] * (p.ndim - 1))))

    @torch.no_grad()
    def _adamw(self, active: torch.Tensor, lr: torch.Tensor, decay: torch.Tensor) -> None:
        """torch's AdamW step (``torch.optim.adamw``, single-tensor arithmetic) with a learning
        rate, weight decay and step count per slot; slots not in this step are unchanged."""
        b1, b2 = BETAS
        self.adam_steps += active.double()
        steps = self.adam_steps.clamp(min=1)
        bc1 = 1 - b1 ** steps
        bc2_sqrt = (1 - b2 ** steps).sqrt()
        on = active.double()
        dev = next(iter(self.params.values())).device
        # [C] vectors on the device, in the parameters' dtype
        # [6, C]: one copy to the device (no wait for the step's kernels: see host_to_device)
        keep, m_w, v_keep, v_w, step_size, bc2 = host_to_device(torch.stack([
            1 - lr * decay, (1 - b1) * on,  # inactive: the moments stay
            torch.where(active, torch.tensor(b2, dtype=torch.float64), 1.0), (1 - b2) * on,
            lr / bc1, bc2_sqrt]).float(), dev)
        for n, p in self.params.items():
            shape = (-1, *([1] * (p.ndim - 1)))
            g, m, v = p.grad, self.exp_avg[n], self.exp_avg_sq[n]
            if self.decayed[n]:
                p.mul_(keep.view(shape))
            m.lerp_(g, m_w.view(shape))
            v.mul_(v_keep.view(shape)).addcmul_(g * v_w.view(shape), g)
            denom = (v.sqrt() / bc2.view(shape)).add_(EPS)
            p.addcdiv_(m * step_size.view(shape), denom, value=-1.0)

    def forward_slot(self, slot: int) -> Callable:
        """``forward(model, batch) -> logits`` of ``slot`` alone (for the evaluator)."""

        def forward(model, batch):
            route = routing_for([slot], [len(batch["input_ids"])], self.device)
            model.set_routing(route)
            try:
                return model(**batch)
            finally:
                model.set_routing(None)

        return forward


def pack_batches(batches: list[dict], pad_id: int) -> dict:
    """The slots' batches one after another, right-padded to the longest (extra right padding
    changes nothing a causal classifier reads: its last real token sees only what precedes)."""
    width = max(b["input_ids"].shape[1] for b in batches)

    def cat(key: str, value: int) -> torch.Tensor:
        return torch.cat([F.pad(b[key], (0, width - b[key].shape[1]), value=value)
                          for b in batches])

    return {"input_ids": cat("input_ids", pad_id), "attention_mask": cat("attention_mask", 0),
            "labels": torch.cat([b["labels"] for b in batches])}


def _confusion(preds: torch.Tensor, labels: torch.Tensor, row_slot: torch.Tensor,
               slots: int, real: torch.Tensor | None = None) -> torch.Tensor:
    """[S, 4]: tp, fp, tn, fn per slot (positive = label 1); ``real`` [N]: the rows to count
    (None: all)."""
    kind = (preds == 1).long() * 2 + (labels == 1).long()  # 3 tp, 2 fp, 0 tn, 1 fn
    cols = torch.tensor([3, 2, 0, 1], device=preds.device)
    onehot = (kind.unsqueeze(1) == cols).float()  # [N, 4]
    if real is not None:
        onehot = onehot * real.unsqueeze(1)
    return torch.zeros(slots, 4, device=preds.device).index_add_(0, row_slot, onehot)
