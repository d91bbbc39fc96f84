"""Packed IA3: peft's IA3 per slot (``IA3Config``, as ``models.cola_ia3`` builds it alone): a
vector per targeted layer and slot, ``ia3_l`` [C, dim], initialised to 1 (the untouched model),
no rank and no dropout. A feed-forward module's vector rescales its input (dim = in), any
other's its output (dim = out, the bias included), as peft's ``IA3Linear.forward`` does. Each
packed row is rescaled by its own slot's vector; the base's matmul still runs once over all
rows."""
from __future__ import annotations

import torch

from models.packed.layers import PackedLayer, Routing, linear_paths
from models.packed.model import PackedMethod


class PackedIA3Linear(PackedLayer):
    """A frozen ``nn.Linear`` (or GPT-2's ``Conv1D``) plus one IA3 vector per slot."""

    tensors = ("ia3_l",)  # 2-D in peft ([1, in] or [out, 1]): decayed, as a solo trial does

    def __init__(self, base, capacity: int, routing_box: list, *, feedforward: bool):
        super().__init__(base, capacity, routing_box)
        self.feedforward = feedforward
        self.ia3_l = self.slot_tensor(self.in_features if feedforward else self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route: Routing | None = self._routing[0]
        if route is None:
            return self.base(x)
        v = route.per_row(self.ia3_l).unsqueeze(1)  # [N, 1, dim]
        if self.feedforward:
            return self.base((x.to(v.dtype) * v).to(x.dtype))
        y = self.base(x)
        return (y * v).to(y.dtype)

    def init_slot(self, slot: int, generator: torch.Generator, plan) -> None:
        self.ia3_l[slot].fill_(1.0)


def targets(classifier, target_modules, head: str, **_) -> dict[str, dict]:
    """{path: {"feedforward": bool}} of the modules peft's IA3 adapts, matched by peft's own
    rules: with no names, peft's per-architecture targets and feed-forward modules; with
    names, those, none of them feed-forward (``models.cola_ia3``)."""
    from peft import IA3Config
    from peft.tuners.ia3 import IA3Model
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
                                      TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING)

    names = list(target_modules) if target_modules else None
    kind = classifier.config.model_type
    if names is None and kind not in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
        raise ValueError(f"no default IA3 targets for model type {kind!r}: give target_modules")
    config = IA3Config(  # what get_peft_model fills in for target_modules=None
        target_modules=names or TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING[kind],
        feedforward_modules=(
            [] if names else TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING[kind]))
    return {path: {"feedforward": IA3Model._check_target_module_feedforward(config, path)}
            for path, _ in linear_paths(classifier, head)
            if check_target_module_exists(config, path)}


def plan_args(cfg) -> dict:
    return {}


IA3 = PackedMethod("ia3", PackedIA3Linear, targets, plan_args)
