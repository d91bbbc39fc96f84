"""Static shapes for the packed step (``--compile`` with ``--pack``): every step's packed batch
has one of a few shapes, so that ``torch.compile`` captures one graph per length bucket (on a
GPU, with CUDA graphs, one replay per step instead of thousands of kernel launches).

The shape of a step is [capacity x rows, width]: every slot takes ``rows`` rows (the sweep's
largest batch), taking part or not, and the width is the smallest bucket that holds the
step's longest sentence. Padding rows carry one pad token (a fully masked row would give the
attention NaNs) and weigh 0 in the loss, so their gradients are exactly 0; padding columns
are right padding, which a causal classifier's last real token never sees. So a slot's loss
equals the unpadded step's within float tolerance (``tests/test_packed_static.py``).

The buckets are quantiles of the training sentences' lengths, rounded up to a multiple of 8
(the last one the longest sentence): padding to the maximum would make most steps several
times longer than their sentences."""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.packed.layers import Routing, host_to_device

QUANTILES = (0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class StaticShapes:
    rows: int  # rows every slot takes in a step: the largest batch a trial can draw
    widths: tuple[int, ...]  # the length buckets, ascending

    @classmethod
    def for_lengths(cls, lengths, rows: int, quantiles=QUANTILES, multiple: int = 8):
        """Buckets at ``quantiles`` of ``lengths`` (token counts), each rounded up to a multiple
        of ``multiple`` but never past the longest, which the last bucket holds."""
        top = int(max(lengths))
        qs = np.quantile(np.asarray(lengths), quantiles)
        widths = {min(top, int(-(-q // multiple) * multiple)) for q in qs} | {top}
        return cls(rows, tuple(sorted(widths)))

    def width(self, longest: int) -> int:
        i = bisect.bisect_left(self.widths, longest)
        if i == len(self.widths):
            raise ValueError(f"a batch {longest} tokens wide is wider than the longest bucket "
                             f"({self.widths[-1]})")
        return self.widths[i]


def static_batch(shapes: StaticShapes, capacity: int, by_slot: dict[int, dict], pad_id: int,
                 device) -> tuple[dict, torch.Tensor]:
    """The step's packed batch in its static shape, [capacity x rows, width] (slot k's rows
    at k x rows), and each row's loss weight [capacity x rows]: 1 / its slot's batch size on
    real rows, 0 on padding."""
    width = shapes.width(max(b["input_ids"].shape[1] for b in by_slot.values()))
    n = capacity * shapes.rows
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    mask[:, 0] = 1  # padding rows: one pad token, so that no row is masked out entirely
    labels = torch.zeros(n, dtype=torch.long)
    weights = torch.zeros(n)
    for k, b in by_slot.items():
        r, t = b["input_ids"].shape
        if r > shapes.rows:
            raise ValueError(f"a batch of {r} rows in a static step of {shapes.rows} rows a slot")
        start = k * shapes.rows
        ids[start:start + r, :t] = b["input_ids"]
        mask[start:start + r] = F.pad(b["attention_mask"], (0, width - t))
        labels[start:start + r] = b["labels"]
        weights[start:start + r] = 1.0 / r
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return ({k: host_to_device(v, device) for k, v in batch.items()},
            host_to_device(weights, device))


def static_routing(shapes: StaticShapes, capacity: int, dropout: torch.Tensor | None,
                   row_slot: torch.Tensor) -> Routing:
    """Every slot, ``rows`` rows each: the adapters' paths read the batch as a view."""
    return Routing(None, capacity, None, None, row_slot, shapes.rows, dropout)
