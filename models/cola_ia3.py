"""CoLA with peft's IA3 (Liu et al., 2022, "(IA)^3"): learned vectors that rescale the keys,
values and feed-forward activations of a frozen model, ~10x fewer trainable parameters than
LoRA at r=4. Only the config and the model building are this method's; everything else is
``models.cola_adapter``'s."""
from __future__ import annotations

from dataclasses import dataclass

from models.cola_adapter import make_setup
from models.config import TrialConfig, require
from models.hf import load_sequence_classifier


@dataclass(frozen=True)
class ColaIA3Config(TrialConfig):
    # None: peft's per-architecture IA3 targets (GPT-2: c_attn and mlp.c_proj; Llama: k, v and
    # down projections), its feed-forward ones rescaled on their input. With module names
    # given, each is rescaled on its output.
    target_modules: tuple | None = None

    def validate(self) -> None:
        super().validate()
        require(self.target_modules is None or (len(self.target_modules) >= 1 and all(
            isinstance(m, str) and m for m in self.target_modules)), "target_modules",
            self.target_modules, "None or a non-empty list of module names")


def build_ia3_model(cfg: ColaIA3Config, *, pad_token_id: int, meta: bool = False):
    """Base classifier with IA3 vectors (initialised to 1: the untouched model) and a trainable
    classification head; every base weight frozen."""
    from peft import IA3Config, get_peft_model

    base = load_sequence_classifier(cfg.model, num_labels=2, pad_token_id=pad_token_id, meta=meta)
    targets = list(cfg.target_modules) if cfg.target_modules else None
    return get_peft_model(base, IA3Config(
        task_type="SEQ_CLS", target_modules=targets,
        feedforward_modules=[] if targets else None,
        fan_in_fan_out=base.config.model_type == "gpt2"))  # GPT-2's Conv1D is (in, out)


setup = make_setup(build_ia3_model)
