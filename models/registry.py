"""The one registry: study name -> trainable, search space, config class, metric and mode.

Adding a study means adding its model module and its space module, then one entry here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from models import cola_kd, cola_lora
from spaces import cola_kd as cola_kd_space
from spaces import cola_lora as cola_lora_space


@dataclass(frozen=True)
class Study:
    name: str
    trainable: Callable
    space: dict
    config_cls: type
    metric: str  # what ASHA and the searcher optimise (best-so-far on the selection split)
    mode: str
    report_metric: str  # what retrains are reported on (held-out dev, last epoch)


STUDIES: dict[str, Study] = {
    "cola_lora": Study("cola_lora", cola_lora.trainable, cola_lora_space.SPACE,
                       cola_lora.ColaLoraConfig, metric="best_val_mcc", mode="max",
                       report_metric="dev_mcc"),
    "cola_kd": Study("cola_kd", cola_kd.trainable, cola_kd_space.SPACE, cola_kd.ColaKDConfig,
                     metric="best_val_mcc", mode="max", report_metric="dev_mcc"),
}


def get_study(name: str) -> Study:
    return STUDIES[name]
