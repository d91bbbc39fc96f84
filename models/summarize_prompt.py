"""Summarization method ``prompt``: peft prompt tuning. A soft prompt of
``num_virtual_tokens`` embeddings, initialised from the embeddings of ``prompt_init_text``,
is prepended to every input; only those num_virtual_tokens x n_embd numbers train."""
from __future__ import annotations

from dataclasses import dataclass

from models.config import require
from models.summarize import SummarizeConfig, load_causal_lm, make_setup

DEFAULT_INIT_TEXT = "Summarize the following news article in a few sentences:"


@dataclass(frozen=True)
class SumPromptConfig(SummarizeConfig):
    learning_rate: float = 3e-2
    num_virtual_tokens: int = 20
    prompt_init_text: str = DEFAULT_INIT_TEXT

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.num_virtual_tokens, int) and self.num_virtual_tokens >= 1,
                "num_virtual_tokens", self.num_virtual_tokens, "must be an integer >= 1")
        require(isinstance(self.prompt_init_text, str) and self.prompt_init_text.strip() != "",
                "prompt_init_text", self.prompt_init_text, "a non-empty text")


def build_model(cfg: SumPromptConfig, data):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    base = load_causal_lm(cfg.model, pad_token_id=data.pad_token_id)
    # The init text's tokens are repeated or cut to num_virtual_tokens by peft.
    return get_peft_model(base, PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=cfg.prompt_init_text, num_virtual_tokens=cfg.num_virtual_tokens,
        tokenizer_name_or_path=cfg.model))


def trainable_counts(space: dict, meta, *, hidden_size: int, **_) -> list[tuple[str, int]]:
    """Trainable parameters at the space's extremes, for the plan: num_virtual_tokens x
    hidden size (no model needed). ``meta``: builds the base model without weights (unused)."""
    return [(f"{n} tokens", int(n) * hidden_size)
            for n in sorted(space["num_virtual_tokens"].edges())]


setup = make_setup(build_model)  # the trial harness's setup for this method
