"""Typed trial configs. Each study's config subclasses ``TrialConfig``; field names equal
search-space names. Tune's dict is converted once, at the top of each trainable."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from models.errors import ConfigError

STAGES = ("sweep", "retrain")


def require(ok: bool, field: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(field, value, allowed)


def _plain(v):
    """numpy scalars / lists from Tune or Optuna -> plain Python values."""
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict)):
        return v.item()
    if isinstance(v, list):
        return tuple(_plain(x) for x in v)
    return v


@dataclass(frozen=True)
class TrialConfig:
    learning_rate: float = 2e-4
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_epochs: int = 3
    seed: int = 0
    model: str = "gpt2"
    stage: str = "sweep"  # "sweep": train on fit, score on select; "retrain": train on all, report on dev
    num_threads: int = 1  # torch intra-op threads = CPUs reserved for the trial
    # Training batches of similar lengths (a seeded, length-grouped shuffle): less padding.
    group_by_length: bool = True
    compile: bool = False  # torch.compile the model (opt-in: compile time vs faster steps)
    # Rows of a batch one forward and backward pass holds (0: the whole batch); the memory plan
    # sets it when a whole batch does not fit. Gradients accumulate over a batch's chunks, so
    # each optimizer step is the whole batch's (models.loop.MicroBatched).
    micro_batch_size: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size",
                self.batch_size, "must be an integer >= 1")
        require(0 <= self.weight_decay < 1, "weight_decay", self.weight_decay, "must be in [0, 1)")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        require(isinstance(self.max_epochs, int) and self.max_epochs >= 1, "max_epochs",
                self.max_epochs, "must be an integer >= 1")
        require(self.stage in STAGES, "stage", self.stage, f"one of {STAGES}")
        require(self.num_threads >= 1, "num_threads", self.num_threads, "must be >= 1")
        require(isinstance(self.micro_batch_size, int) and self.micro_batch_size >= 0,
                "micro_batch_size", self.micro_batch_size, "must be an integer >= 0 (0: the "
                "whole batch)")
        for flag in ("group_by_length", "compile"):
            require(isinstance(getattr(self, flag), bool), flag, getattr(self, flag),
                    "must be true or false")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_tune(cls, config: dict) -> "TrialConfig":
        """Tune's dict -> config. Keys starting with "_" are bookkeeping and are ignored."""
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        unknown = sorted(set(config) - cls.field_names())
        if unknown:
            raise ConfigError(unknown[0], config[unknown[0]],
                              f"not a field of {cls.__name__}: {sorted(cls.field_names())}")
        return cls(**{k: _plain(v) for k, v in config.items()})

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
