"""Summarization method ``last-layers``: every weight frozen except the last
``n_last_layers`` transformer blocks and the final layer norm.

GPT-2 ties its output head to the input embedding matrix (50257 x 768 = 38.6 M numbers in
GPT-2 small). Unfreezing the head would unfreeze the embeddings of every token too, so the
tied head stays frozen: the method trains the top of the network, not the vocabulary."""
from __future__ import annotations

from dataclasses import dataclass

from models.config import require
from models.errors import InputError
from models.summarize import SummarizeConfig, load_causal_lm, make_setup

# (blocks, final norm) attribute paths of common decoder-only architectures.
LAYOUTS = (("transformer.h", "transformer.ln_f"),  # GPT-2, GPT-J, Falcon
           ("model.layers", "model.norm"),  # Llama, Mistral, Qwen
           ("gpt_neox.layers", "gpt_neox.final_layer_norm"))  # Pythia


@dataclass(frozen=True)
class SumLastLayersConfig(SummarizeConfig):
    learning_rate: float = 1e-4
    n_last_layers: int = 2

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.n_last_layers, int) and self.n_last_layers >= 1,
                "n_last_layers", self.n_last_layers, "must be an integer >= 1")


def _get(model, dotted: str):
    for part in dotted.split("."):
        model = getattr(model, part, None)
        if model is None:
            return None
    return model


def blocks_and_norm(model):
    """-> (ModuleList of transformer blocks, final norm), or ValueError for an unknown layout."""
    for blocks, norm in LAYOUTS:
        if _get(model, blocks) is not None and _get(model, norm) is not None:
            return _get(model, blocks), _get(model, norm)
    raise ValueError(f"{type(model).__name__}: no known transformer-block layout "
                     f"({', '.join(b for b, _ in LAYOUTS)})")


def freeze_all_but_last(model, n_last_layers: int):
    blocks, norm = blocks_and_norm(model)
    if n_last_layers > len(blocks):
        raise ValueError(f"n_last_layers {n_last_layers}: the model has {len(blocks)} blocks")
    for p in model.parameters():
        p.requires_grad_(False)
    for module in (*blocks[len(blocks) - n_last_layers:], norm):
        for p in module.parameters():
            p.requires_grad_(True)
    return model


def build_model(cfg: SumLastLayersConfig, data):
    return freeze_all_but_last(load_causal_lm(cfg.model, pad_token_id=data.pad_token_id),
                               cfg.n_last_layers)


def trainable_counts(space: dict, meta, **_) -> list[tuple[str, int]]:
    """Trainable parameters at the space's extremes of n_last_layers, on the base model
    without weights (``meta()``), for the plan. More blocks than the model has is an
    InputError naming the dimension."""
    from models.hf import count_parameters

    out = []
    for n in sorted(space["n_last_layers"].edges()):
        try:
            m = freeze_all_but_last(meta(), int(n))
        except ValueError as e:
            raise InputError(f"search space n_last_layers = {space['n_last_layers'].describe()}"
                             f": {e}") from None
        out.append((f"{n} blocks", count_parameters(m)["trainable_params"]))
    return out


setup = make_setup(build_model)  # the trial harness's setup for this method
