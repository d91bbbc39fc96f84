"""Study 1: GPT-2 (or any HF model with a sequence-classification head) + peft LoRA on CoLA.

Owns the study's config and its ``setup``: model building and loss. Training, reporting and
checkpointing are shared (``models.loop``, ``models.trial``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from models.batching import classification_batches
from models.classify import make_evaluator, stage_splits
from models.cola_data import ColaData
from models.config import TrialConfig, require
from models.hf import count_parameters, load_sequence_classifier
from models.loop import TrialSetup

# The four matrices the reference adapts in every GPT-2 block: attention c_attn and c_proj,
# MLP c_fc and c_proj (peft matches "c_proj" in both places by suffix).
GPT2_TARGET_MODULES = ("c_attn", "c_proj", "c_fc")


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
        require(isinstance(self.lora_r, int) and self.lora_r >= 1, "lora_r", self.lora_r,
                "must be an integer >= 1")
        require(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "must be > 0")
        require(0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "must be in [0, 1)")
        require(self.target_modules is None or (len(self.target_modules) >= 1 and all(
            isinstance(m, str) and m for m in self.target_modules)), "target_modules",
            self.target_modules, "None or a non-empty list of module names")


def lora_targets(model, target_modules):
    if target_modules:
        return "all-linear" if tuple(target_modules) == ("all-linear",) else list(target_modules)
    return list(GPT2_TARGET_MODULES) if model.config.model_type == "gpt2" else None


def build_lora_model(cfg: ColaLoraConfig, *, pad_token_id: int, meta: bool = False):
    """Base classifier with LoRA adapters. peft freezes every base weight (embeddings
    included) and keeps the new classification head trainable (task type SEQ_CLS)."""
    from peft import LoraConfig, TaskType, get_peft_model

    base = load_sequence_classifier(cfg.model, num_labels=2, pad_token_id=pad_token_id, meta=meta)
    peft_config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, target_modules=lora_targets(base, cfg.target_modules),
        # GPT-2 stores its projections as Conv1D (in, out), the transpose of nn.Linear.
        fan_in_fan_out=base.config.model_type == "gpt2",
    )
    return get_peft_model(base, peft_config)


def _forward(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _loss(model, batch):
    return model(**batch).loss


def setup(cfg: ColaLoraConfig, data: ColaData, device) -> TrialSetup:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    model = build_lora_model(cfg, pad_token_id=data.pad_token_id).to(device)
    train_split, evals, metric = stage_splits(data, cfg.stage)
    ids, labels = data.split(train_split)

    def train_batches(epoch: int):
        return classification_batches(ids, labels, batch_size=cfg.batch_size,
                                      pad_id=data.pad_token_id, shuffle_seed=cfg.seed * 1000 + epoch)

    def save(path: str):
        model.save_pretrained(path)  # adapter_model.safetensors + adapter_config.json

    def load(path: str):
        set_peft_model_state_dict(model, load_file(str(Path(path) / "adapter_model.safetensors")))

    return TrialSetup(
        model=model, loss_fn=_loss, train_batches=train_batches,
        steps_per_epoch=-(-len(ids) // cfg.batch_size),
        evaluate=make_evaluator(data, evals, forward=_forward, device=device),
        best_metric=metric, mode="max", save_weights=save, load_weights=load,
        info=count_parameters(model),
    )


def trainable(config: dict, data: ColaData, provenance: dict) -> None:
    """Ray Tune function trainable of this study (``data`` arrives via tune.with_parameters)."""
    from models.trial import run_trial

    run_trial(config, data=data, provenance=provenance, config_cls=ColaLoraConfig, setup_fn=setup)
