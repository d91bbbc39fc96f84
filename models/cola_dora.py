"""CoLA with DoRA (Liu et al., 2024): LoRA on the direction of each adapted weight plus a
trainable magnitude per output, through peft's ``LoraConfig(use_dora=True)``. The same fields
and targets as LoRA; only the model building is this method's."""
from __future__ import annotations

from dataclasses import dataclass

from models.cola_adapter import make_setup
from models.cola_lora import ColaLoraConfig
from models.hf import load_sequence_classifier
from models.lora import lora_targets


@dataclass(frozen=True)
class ColaDoraConfig(ColaLoraConfig):
    pass


def build_dora_model(cfg: ColaDoraConfig, *, pad_token_id: int, meta: bool = False):
    """Base classifier with DoRA adapters; every base weight frozen, the head trainable."""
    from peft import LoraConfig, get_peft_model

    base = load_sequence_classifier(cfg.model, num_labels=2, pad_token_id=pad_token_id, meta=meta)
    return get_peft_model(base, LoraConfig(
        task_type="SEQ_CLS", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, target_modules=lora_targets(base, cfg.target_modules),
        fan_in_fan_out=base.config.model_type == "gpt2", use_dora=True))


setup = make_setup(build_dora_model)
