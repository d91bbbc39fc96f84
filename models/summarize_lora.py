"""Summarization method ``lora``: peft LoRA on GPT-2's attention and MLP matrices (c_attn,
c_proj, c_fc), or on ``target_modules``; the base model stays frozen."""
from __future__ import annotations

from dataclasses import dataclass

from models.cola_lora import lora_targets
from models.config import require
from models.summarize import SummarizeConfig, load_causal_lm, setup


@dataclass(frozen=True)
class SumLoraConfig(SummarizeConfig):
    learning_rate: float = 5e-4
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    target_modules: tuple | None = None  # None: GPT-2's c_attn c_proj c_fc, peft's default otherwise

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.lora_r, int) and self.lora_r >= 1, "lora_r", self.lora_r,
                "must be an integer >= 1")
        require(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "must be > 0")
        require(0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "must be in [0, 1)")


def build_model(cfg: SumLoraConfig, data, *, base=None):
    from peft import LoraConfig, TaskType, get_peft_model

    base = base if base is not None else load_causal_lm(cfg.model, pad_token_id=data.pad_token_id)
    return get_peft_model(base, LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, target_modules=lora_targets(base, cfg.target_modules),
        # GPT-2 stores its projections as Conv1D (in, out), the transpose of nn.Linear.
        fan_in_fan_out=base.config.model_type == "gpt2"))


def trainable(config: dict, data, provenance: dict) -> None:
    """Ray Tune function trainable (``data`` arrives via tune.with_parameters)."""
    from models.trial import run_trial

    run_trial(config, data=data, provenance=provenance, config_cls=SumLoraConfig,
              setup_fn=lambda cfg, d, dev: setup(cfg, d, dev, build_model=build_model))
