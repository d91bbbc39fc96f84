"""Study 1: GPT-2 (or any HF model with a sequence-classification head) + peft LoRA on CoLA.

Owns the method's config and model building; the loss, evaluation, batches and trainable are
every adapter method's (``models.cola_adapter``)."""
from __future__ import annotations

from dataclasses import dataclass

from models.cola_adapter import make_setup
from models.config import TrialConfig
from models.hf import load_sequence_classifier
from models.lora import add_lora, validate_lora_fields


@dataclass(frozen=True)
class ColaLoraConfig(TrialConfig):
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.1
    # None: GPT-2's four matrices for GPT-2 models, peft's per-architecture default otherwise.
    # A tuple of module names, or ("all-linear",).
    target_modules: tuple | None = None

    def validate(self) -> None:
        super().validate()
        validate_lora_fields(self)


def build_lora_model(cfg: ColaLoraConfig, *, pad_token_id: int, meta: bool = False):
    """Base classifier with LoRA adapters. peft freezes every base weight (embeddings
    included) and keeps the new classification head trainable (task type SEQ_CLS)."""
    base = load_sequence_classifier(cfg.model, num_labels=2, pad_token_id=pad_token_id, meta=meta)
    return add_lora(base, cfg, "SEQ_CLS")


setup = make_setup(build_lora_model)
