"""Summarization method ``lora``: peft LoRA on GPT-2's attention and MLP matrices (c_attn,
c_proj, c_fc), or on ``target_modules``; the base model stays frozen."""
from __future__ import annotations

from dataclasses import dataclass

from models.lora import add_lora, validate_lora_fields
from models.summarize import SummarizeConfig, load_causal_lm, setup as summarize_setup


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


def setup(cfg, data, device):
    """The trial harness's setup for this method (``models.summarize.setup`` with this
    method's model)."""
    return summarize_setup(cfg, data, device, build_model=build_model)
