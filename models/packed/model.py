"""The packed model, whatever the adapter method: a sequence classifier whose targeted layers
carry ``capacity`` slots of one method (``PackedMethod``) and whose head is one per slot.

A method is one ``PackedMethod`` entry in a file of its own (``lora.py``, ``dora.py``,
``ia3.py``: its layer class, which modules it targets, what it takes of a trial's
configuration); the registry's Study names it (``Study.packed``). The model, the routing, the
head, the trainer and the engine are shared: adding a method adds a file, not a branch here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models.packed.layers import PackedHead, PackedLayer, Routing


def _no_check(cfg, options: dict) -> None:
    pass


@dataclass(frozen=True)
class PackedMethod:
    """One adapter method as the packed model trains it.

    ``layer``: the ``PackedLayer`` that replaces each targeted module. ``targets(classifier,
    target_modules, head, **options)`` -> {module path: the layer's keyword arguments}, matched
    as the method's solo model (peft) matches them; ``options`` are the engine's (LoRA's
    ``max_rank``). ``plan_args(cfg)`` -> the ``SlotPlan`` fields a trial's configuration sets
    for its adapter (LoRA: rank, alpha, dropout; IA3: none). ``check(cfg, options)`` raises
    ConfigError, naming the field, for a configuration the model cannot hold."""

    name: str
    layer: type[PackedLayer]
    targets: Callable[..., dict[str, dict]]
    plan_args: Callable[[object], dict]
    check: Callable[[object, dict], None] = _no_check


class PackedModel(nn.Module):
    """``classifier`` (frozen) with ``method``'s packed layers on the modules it targets and a
    head per slot. ``set_routing`` before each forward says which rows go to which slot."""

    def __init__(self, classifier: nn.Module, *, method: PackedMethod, capacity: int,
                 target_modules, head: str = "score", **options):
        super().__init__()
        for p in classifier.parameters():
            p.requires_grad_(False)
        self.method, self.capacity, self.options = method, capacity, options
        self.routing_box: list = [None]
        targets = method.targets(classifier, target_modules, head, **options)
        if not targets:
            raise ValueError(f"no layer of the model matches target_modules {target_modules!r}")
        self.layers: dict[str, PackedLayer] = {}
        for path, kwargs in targets.items():
            parent_path, _, leaf = path.rpartition(".")
            parent = classifier.get_submodule(parent_path) if parent_path else classifier
            layer = method.layer(getattr(parent, leaf), capacity, self.routing_box, **kwargs)
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
            for name in layer.tensors:
                out[f"{path}.{name}"] = getattr(layer, name)
        out["head.weight"] = self.head.weight
        if self.head.bias is not None:
            out["head.bias"] = self.head.bias
        return out

    def no_decay(self) -> set[str]:
        """Names in ``slotted`` that a solo trial's AdamW does not decay (``build_optimizer``:
        one-dimensional parameters, i.e. biases, norms, DoRA's magnitudes)."""
        out = {f"{path}.{n}" for path, layer in self.layers.items() for n in layer.no_decay}
        return out | ({"head.bias"} if self.head.bias is not None else set())

    def _views(self, slot: int, plan) -> dict[str, torch.Tensor]:
        """Slot ``slot``'s tensors at its own size, by their ``slotted`` names."""
        out = {f"{path}.{name}": v for path, layer in self.layers.items()
               for name, v in layer.slot_views(slot, plan).items()}
        out["head.weight"] = self.head.weight[slot]
        if self.head.bias is not None:
            out["head.bias"] = self.head.bias[slot]
        return out

    def trainable(self, plan) -> int:
        """The trainable parameters of ``plan``'s adapter as its solo trial counts them."""
        return sum(v.numel() for v in self._views(0, plan).values())

    def check(self, plan) -> None:
        for layer in self.layers.values():
            layer.check(plan)

    @torch.no_grad()
    def init_slot(self, slot: int, plan, *, init_std: float) -> None:
        """Fresh adapter in ``slot``, drawn from a generator seeded with ``plan.seed`` alone
        (so a slot's start does not depend on which other slots are in use): the head ~ N(0,
        init_std) (transformers' initialisation of a new head), then each layer in order."""
        self.check(plan)
        g = torch.Generator().manual_seed(plan.seed)
        w = self.head.weight[slot]
        w.copy_(torch.randn(w.shape, generator=g) * init_std)
        if self.head.bias is not None:
            self.head.bias[slot].zero_()
        for layer in self.layers.values():
            for name in layer.tensors:
                getattr(layer, name)[slot].zero_()
            layer.init_slot(slot, g, plan)
            layer.set_plan(slot, plan)

    def slot_state(self, slot: int, plan) -> dict[str, torch.Tensor]:
        """Slot ``slot``'s weights at their own size (CPU copies), by their ``slotted`` names
        (LoRA: {path.lora_A: [r, in], path.lora_B: [out, r], head.weight, head.bias})."""
        return {n: v.detach().cpu().clone() for n, v in self._views(slot, plan).items()}

    @torch.no_grad()
    def load_slot(self, slot: int, state: dict[str, torch.Tensor], plan) -> None:
        self.check(plan)
        for p in self.slotted().values():
            p[slot].zero_()
        for name, v in self._views(slot, plan).items():
            v.copy_(state[name])
        for layer in self.layers.values():
            layer.set_plan(slot, plan)
