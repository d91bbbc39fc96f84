"""LoRA pieces every LoRA study shares: default targets, field validation, the peft config."""
from __future__ import annotations

from models.config import require

# The four matrices the reference adapts in every GPT-2 block: attention c_attn and c_proj,
# MLP c_fc and c_proj (peft matches "c_proj" in both places by suffix).
GPT2_TARGET_MODULES = ("c_attn", "c_proj", "c_fc")
# Llama-style decoders (Llama, Mistral, Qwen2; SmolLM2 is a Llama): likewise every attention
# and MLP projection. peft's own default for them is q_proj and v_proj only; adapting every
# linear layer is what QLoRA (Dettmers et al., 2023) found necessary to match full fine-tuning,
# and it keeps the GPT-2 and Llama studies comparable.
LLAMA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj")
DEFAULT_TARGETS = {"gpt2": GPT2_TARGET_MODULES, "llama": LLAMA_TARGET_MODULES,
                   "mistral": LLAMA_TARGET_MODULES, "qwen2": LLAMA_TARGET_MODULES}


def validate_lora_fields(cfg) -> None:
    """lora_r, lora_alpha, lora_dropout and target_modules of a study config."""
    require(isinstance(cfg.lora_r, int) and cfg.lora_r >= 1, "lora_r", cfg.lora_r,
            "must be an integer >= 1")
    require(cfg.lora_alpha > 0, "lora_alpha", cfg.lora_alpha, "must be > 0")
    require(0 <= cfg.lora_dropout < 1, "lora_dropout", cfg.lora_dropout, "must be in [0, 1)")
    require(cfg.target_modules is None or (len(cfg.target_modules) >= 1 and all(
        isinstance(m, str) and m for m in cfg.target_modules)), "target_modules",
        cfg.target_modules, "None or a non-empty list of module names")


def lora_targets(model, target_modules):
    if target_modules:
        return "all-linear" if tuple(target_modules) == ("all-linear",) else list(target_modules)
    default = DEFAULT_TARGETS.get(model.config.model_type)
    return list(default) if default else None  # None: peft's own default for the type


def add_lora(base, cfg, task_type: str):
    """``base`` with LoRA adapters per ``cfg`` (peft freezes every base weight)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(base, LoraConfig(
        task_type=task_type, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, target_modules=lora_targets(base, cfg.target_modules),
        # GPT-2 stores its projections as Conv1D (in, out), the transpose of nn.Linear.
        fan_in_fan_out=base.config.model_type == "gpt2"))
