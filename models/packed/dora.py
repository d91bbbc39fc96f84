"""Packed DoRA: peft's ``DoraLinearLayer`` per slot (``LoraConfig(use_dora=True)``, as
``models.cola_dora`` builds it alone): LoRA's pair plus a magnitude per output,
``lora_magnitude_vector`` [C, out], initialised to the row norms of W + scaling·B·A (B = 0
then: W's).

Each slot's output is ``base(x) + (m/‖W + scaling·B·A‖ - 1) · W x + m/‖...‖ · scaling·B·A·x``,
the norm per output row, computed per slot from its own A and B and detached (DoRA §4.3, as
peft does: the norm gets no gradient). W x is the base's own output less its bias; with dropout
on, peft computes it again from the dropped input (and the low-rank path reads the same dropped
input), so a slot with dropout does too. The fields, targets and checks are LoRA's."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.packed import lora
from models.packed.layers import Routing
from models.packed.lora import PackedLoRALinear
from models.packed.model import PackedMethod


class PackedDoRALinear(PackedLoRALinear):
    """A frozen ``nn.Linear`` (or GPT-2's ``Conv1D``) plus one DoRA adapter per slot."""

    tensors = ("lora_A", "lora_B", "lora_magnitude_vector")
    no_decay = ("lora_magnitude_vector",)  # 1-D in peft: build_optimizer does not decay it

    def __init__(self, base, capacity: int, routing_box: list, *, max_rank: int):
        super().__init__(base, capacity, routing_box, max_rank=max_rank)
        self.lora_magnitude_vector = self.slot_tensor(self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        route: Routing | None = self._routing[0]
        if route is None:
            return y
        xs = self.inputs(x, route)  # [S, P*T, in], dropped where the slot has dropout
        low = self.low_rank(xs, route)  # [S, P*T, out]: scaling·B·A·x
        norm = self.weight_norm(route.pick(self.lora_A), route.pick(self.lora_B),
                                route.pick(self.scale))
        m = (route.pick(self.lora_magnitude_vector) / norm).unsqueeze(1)  # [S, 1, out]
        delta = (m - 1) * self.base_part(xs, y, route) + m * low
        return y + route.join(delta, x.shape[1]).to(y.dtype)

    @torch.no_grad()
    def weight_norm(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """[S, out]: ‖W + scaling·B·A‖ per output row and slot, without gradient. A slot's
        padding (rows of A, columns of B past its rank) is zero, so B·A is its own rank's."""
        w = self.weight_out_in().to(a.dtype)  # [out, in]
        delta = torch.bmm(b, a) * scale[:, :1].unsqueeze(2)  # [S, out, in]; scale[:, 0] = a/r
        return torch.linalg.norm(w + delta, dim=2)

    def base_part(self, xs: torch.Tensor, y: torch.Tensor, route: Routing) -> torch.Tensor:
        """[S, P*T, out]: W x without the bias, each slot's as peft takes it: the base's output
        less the bias, or, for a slot with dropout while training, W times its dropped input."""
        ys = route.split(y)
        if self.base.bias is not None:
            ys = ys - self.base.bias
        if route.dropout is None or not self.training:
            return ys
        again = F.linear(xs.to(self.base.weight.dtype), self.weight_out_in())
        return torch.where((route.dropout > 0).view(-1, 1, 1), again, ys.to(again.dtype))

    def init_slot(self, slot: int, generator: torch.Generator, plan) -> None:
        super().init_slot(slot, generator, plan)
        # B = 0: ‖W + scaling·B·A‖ = ‖W‖, whatever the seed
        self.lora_magnitude_vector[slot].copy_(
            torch.linalg.norm(self.weight_out_in().float(), dim=1))

    def slot_views(self, slot: int, plan) -> dict[str, torch.Tensor]:
        return {**super().slot_views(slot, plan),
                "lora_magnitude_vector": self.lora_magnitude_vector[slot]}


DORA = PackedMethod("dora", PackedDoRALinear, lora.targets, lora.plan_args, lora.check)
