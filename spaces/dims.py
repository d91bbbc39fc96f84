"""Dimension types for search spaces: plain frozen data, converted to Ray Tune domains by the
sweep driver. ``edges()`` lists the extreme values, which the driver validates against the
study's config before Ray starts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class _Range:
    low: float
    high: float
    scale = "uniform"

    def edges(self) -> tuple:
        return (self.low, self.high)

    def describe(self) -> str:
        return f"{self.scale}[{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Uniform(_Range):
    scale = "uniform"


@dataclass(frozen=True)
class LogUniform(_Range):
    scale = "log-uniform"


@dataclass(frozen=True)
class Choice:
    values: tuple

    def edges(self) -> tuple:
        return tuple(self.values)

    def describe(self) -> str:
        return "{" + ", ".join(str(v) for v in self.values) + "}"


@dataclass(frozen=True)
class Fixed:
    value: Any

    def edges(self) -> tuple:
        return (self.value,)

    def describe(self) -> str:
        return f"fixed {self.value}"



# Where a hyperparameter cannot go, whatever the space says: a range whose bound sits on its
# limit cannot be widened there (a best kd_fraction of 1.0 is not advice to widen [0, 1]).
LIMITS = {
    "kd_fraction": (0.0, 1.0),
    "dropout": (0.0, 1.0),
    "lora_dropout": (0.0, 1.0),
    "weight_decay": (0.0, float("inf")),
    "kd_temperature": (1.0, float("inf")),
}
