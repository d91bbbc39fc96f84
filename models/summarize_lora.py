"""Summarization method ``lora``: peft LoRA on GPT-2's attention and MLP matrices (c_attn,
c_proj, c_fc), or on ``target_modules``; the base model stays frozen."""
from __future__ import annotations

from dataclasses import dataclass

from models.errors import InputError
from models.lora import add_lora, validate_lora_fields
from models.summarize import SummarizeConfig, load_causal_lm, make_setup


@dataclass(frozen=True)
class SumLoraConfig(SummarizeConfig):
    learning_rate: float = 5e-4
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    target_modules: tuple | None = None  # None: GPT-2's c_attn c_proj c_fc, peft's default otherwise

    def validate(self) -> None:
        super().validate()
        validate_lora_fields(self)


def build_model(cfg: SumLoraConfig, data, *, base=None):
    base = base if base is not None else load_causal_lm(cfg.model, pad_token_id=data.pad_token_id)
    return add_lora(base, cfg, "CAUSAL_LM")


def trainable_counts(space: dict, meta, *, model_dir: str, target_modules=None,
                     **_) -> list[tuple[str, int]]:
    """Trainable parameters at the space's extremes of lora_r, on the base model without
    weights (``meta()``), for the plan. A target that the model lacks is an InputError."""
    from models.hf import count_parameters

    out = []
    for r in sorted(space["lora_r"].edges()) if "lora_r" in space else [8]:
        try:
            m = build_model(SumLoraConfig(model=model_dir, lora_r=int(r),
                                          target_modules=target_modules), None, base=meta())
        except ValueError as e:
            raise InputError(f"--target-modules {' '.join(target_modules or ['(default)'])}"
                             f": {str(e).splitlines()[0]}") from None
        out.append((f"r={r}", count_parameters(m)["trainable_params"]))
    return out


setup = make_setup(build_model)  # the trial harness's setup for this method
