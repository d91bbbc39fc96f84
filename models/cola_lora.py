"""Study 1: GPT-2 (or any HF model with a sequence-classification head) + peft LoRA on CoLA.

Owns the study's config and its ``setup``: model building and loss. Training, reporting and
checkpointing are shared (``models.loop``, ``models.trial``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.batching import classification_batches
from models.classify import make_evaluator, stage_splits, stage_track
from models.cola_data import ColaData
from models.config import TrialConfig
from models.hf import count_parameters, load_sequence_classifier
from models.lora import add_lora, validate_lora_fields
from models.loop import TrialSetup
from models.metrics import confusion_counts, confusion_metrics


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


def _forward(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _loss(model, batch):
    out = model(**batch)
    return out.loss, confusion_counts(out.logits, batch["labels"])


def setup(cfg: ColaLoraConfig, data: ColaData, device) -> TrialSetup:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    model = build_lora_model(cfg, pad_token_id=data.pad_token_id).to(device)
    train_split, evals, metric = stage_splits(data, cfg.stage)
    ids, labels = data.split(train_split)

    def train_batches(epoch: int):
        return classification_batches(ids, labels, batch_size=cfg.batch_size,
                                      pad_id=data.pad_token_id, shuffle_seed=cfg.seed * 1000 + epoch,
                                      group_by_length=cfg.group_by_length)

    def save(path: str):
        model.save_pretrained(path)  # adapter_model.safetensors + adapter_config.json

    def load(path: str):
        set_peft_model_state_dict(model, load_file(str(Path(path) / "adapter_model.safetensors")))

    return TrialSetup(
        model=model, loss_fn=_loss, train_batches=train_batches,
        steps_per_epoch=-(-len(ids) // cfg.batch_size),
        evaluate=make_evaluator(data, evals, forward=_forward, device=device),
        best_metric=metric, mode="max", save_weights=save, load_weights=load,
        info=count_parameters(model), track=stage_track(cfg.stage),
        train_stats=confusion_metrics,
    )


def trainable(config: dict, data: ColaData, provenance: dict) -> None:
    """Ray Tune function trainable of this study (``data`` arrives via tune.with_parameters)."""
    from models.trial import run_trial

    run_trial(config, data=data, provenance=provenance, config_cls=ColaLoraConfig, setup_fn=setup)
