"""Packed LoRA: peft's LoRA per slot, ``base(x) + B(A(dropout(x))) * alpha / r`` on the targeted
layers (``models.cola_lora`` alone).

``lora_A`` [C, R, in] and ``lora_B`` [C, out, R], R = the engine's largest rank; a slot of rank
r < R has zero rows in A and zero columns in B past r, and its scale-and-mask ``scale[k]`` [R]
is alpha / r over the first r entries and 0 after them, so those stay zero (their gradients
are zero)."""
from __future__ import annotations

import math

import torch

from models.errors import ConfigError
from models.packed.layers import PackedLayer, Routing, dropout_mask, linear_paths
from models.packed.model import PackedMethod, PackedModel


class PackedLoRALinear(PackedLayer):
    """A frozen ``nn.Linear`` (or GPT-2's ``Conv1D``) plus one LoRA pair per slot."""

    tensors = ("lora_A", "lora_B")

    def __init__(self, base, capacity: int, routing_box: list, *, max_rank: int):
        super().__init__(base, capacity, routing_box)
        self.max_rank = max_rank
        self.lora_A = self.slot_tensor(max_rank, self.in_features)
        self.lora_B = self.slot_tensor(self.out_features, max_rank)
        self.register_buffer("scale", torch.zeros(capacity, max_rank, device=self.lora_A.device),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        route: Routing | None = self._routing[0]
        if route is None:
            return y
        delta = self.low_rank(self.inputs(x, route), route)  # [S, P*T, out]
        return y + route.join(delta, x.shape[1]).to(y.dtype)

    def inputs(self, x: torch.Tensor, route: Routing) -> torch.Tensor:
        """[N, T, in] -> [S, P*T, in]: each adapter's rows, with its dropout when training."""
        xs = route.split(x)
        if route.dropout is not None and self.training:
            xs = xs * dropout_mask(xs, route.dropout)
        return xs

    def low_rank(self, xs: torch.Tensor, route: Routing) -> torch.Tensor:
        """[S, P*T, in] -> [S, P*T, out]: each adapter's B(A(x)) * alpha / r."""
        a, b = route.pick(self.lora_A), route.pick(self.lora_B)  # [S, R, in], [S, out, R]
        scale = route.pick(self.scale).unsqueeze(1)  # [S, 1, R]
        h = torch.bmm(xs.to(a.dtype), a.transpose(1, 2)) * scale  # [S, P*T, R]
        return torch.bmm(h, b.transpose(1, 2))

    def check(self, plan) -> None:
        if not 1 <= plan.rank <= self.max_rank:
            raise ValueError(f"lora_r {plan.rank} is outside 1..{self.max_rank} (the packed "
                             "maximum)")

    def init_slot(self, slot: int, generator: torch.Generator, plan) -> None:
        """A as peft initialises it (kaiming-uniform, a = sqrt(5): U(-1/sqrt(in),
        1/sqrt(in))), B = 0."""
        bound = 1.0 / math.sqrt(self.in_features)
        a = torch.rand((plan.rank, self.in_features), generator=generator)
        self.lora_A[slot, :plan.rank].copy_(a * 2 * bound - bound)

    def set_plan(self, slot: int, plan) -> None:
        self.scale[slot].zero_()
        self.scale[slot, :plan.rank] = plan.alpha / plan.rank

    def slot_views(self, slot: int, plan) -> dict[str, torch.Tensor]:
        return {"lora_A": self.lora_A[slot, :plan.rank],
                "lora_B": self.lora_B[slot, :, :plan.rank]}


def lora_paths(classifier, target_modules, head: str) -> list[str]:
    """The module paths ``models.lora.add_lora`` adapts: the project's default targets for the
    model type (peft's own when it has none), or the names given, matched as peft matches a
    list (the whole path or its last part(s)); "all-linear": every Linear/Conv1D but the
    head."""
    from models.lora import lora_targets

    names = (target_modules if isinstance(target_modules, str)
             else lora_targets(classifier, target_modules))
    if names is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        names = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
            classifier.config.model_type)
        if names is None:
            raise ValueError(f"no default LoRA targets for model type "
                             f"{classifier.config.model_type!r}: give target_modules")
    return [path for path, _ in linear_paths(classifier, head)
            if names == "all-linear" or any(path == n or path.endswith("." + n) for n in names)]


def targets(classifier, target_modules, head: str, *, max_rank: int, **_) -> dict[str, dict]:
    return {path: {"max_rank": max_rank} for path in lora_paths(classifier, target_modules, head)}


def plan_args(cfg) -> dict:
    return {"rank": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout}


def check(cfg, options: dict) -> None:
    top = options["max_rank"]
    if not 1 <= cfg.lora_r <= top:
        raise ConfigError("lora_r", cfg.lora_r, f"<= {top}, the packed engine's largest rank")


LORA = PackedMethod("lora", PackedLoRALinear, targets, plan_args, check)


class PackedLoRA(PackedModel):
    """The packed model of LoRA (the name bench/ and the tests build it by)."""

    def __init__(self, classifier, *, capacity: int, max_rank: int, target_modules,
                 head: str = "score"):
        super().__init__(classifier, method=LORA, capacity=capacity,
                         target_modules=target_modules, head=head, max_rank=max_rank)
        self.max_rank = max_rank
