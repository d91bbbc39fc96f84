"""The one registry: study name -> trainable, search space, config class, metric and mode.

A CoLA adapter method is a model module (config + ``build_model``) and a space, then one entry
here; ``search/cola_lora.py --method`` offers it (and packs its trials when the entry names its
packed method, a file under ``models/packed/``). A summarization method is a model module
(config, ``setup``, ``trainable_counts``) and a space (with its smoke-test overrides), then one
entry here; ``search/cnndm_summarize.py --method`` offers it. A new study also needs its
command in ``search/``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from models import (cola_dora, cola_ia3, cola_kd, cola_lora, summarize_last_layers,
                    summarize_lora, summarize_prompt)
from models.packed.dora import DORA
from models.packed.ia3 import IA3
from models.packed.lora import LORA
from models.packed.model import PackedMethod
from spaces import cnndm as cnndm_space
from spaces import cola_dora as cola_dora_space
from spaces import cola_ia3 as cola_ia3_space
from spaces import cola_kd as cola_kd_space
from spaces import cola_lora as cola_lora_space

COLA_REPORT = r"^dev(_in|_out)?_(accuracy|mcc)$"
CNNDM_REPORT = r"^(test_(loss|ppl|rouge1|rouge2|rougeL)|mean_train_s|max_peak_mem_mb)$"


@dataclass(frozen=True)
class Study:
    name: str
    setup: Callable  # (cfg, data, device) -> models.loop.TrialSetup; run by models.trial
    space: dict
    config_cls: type
    metric: str  # what ASHA and the searcher optimise (best-so-far on the selection split)
    mode: str
    report_metric: str  # what retrains are reported on (held-out split)
    report_columns: str = COLA_REPORT  # regex: retrain columns summarised as mean ± sd
    report_split: str = "GLUE dev"  # where retrains are reported, in words
    retrain_weights: str = "the last epoch's weights"  # which weights a retrain reports
    # --metric NAME -> (result key, mode): what the searcher and the scheduler may rank trials
    # on; the first is the default. Retrain selection always uses ``metric``.
    search_metrics: dict = field(default_factory=dict)
    # CoLA adapter methods (search/cola_lora.py --method NAME): how to build the model, the
    # dimension whose values change the trainable-parameter count (None: one count), and the
    # --space overrides the smoke test's tiny model needs.
    build_model: Callable | None = None
    size_dim: str | None = None
    smoke_space: tuple = ()
    # Summarization methods (search/cnndm_summarize.py --method NAME, NAME = the study name
    # without "cnndm_", "_" as "-"): trainable parameters at the space's extremes for the plan,
    # ``(space, meta, *, model_dir, hidden_size, target_modules) -> [(label, count)]``.
    trainable_counts: Callable | None = None
    # How its trials train K at a time on one shared base (--pack K, search/packing.py): the
    # packed method (models/packed/), None when they cannot.
    packed: PackedMethod | None = None

    @property
    def packable(self) -> bool:
        return self.packed is not None

    @property
    def trainable(self) -> Callable:
        """The one Ray trainable (``models.trial.trainable_for``), for this study."""
        from models.trial import trainable_for

        return trainable_for(self.name)

    @property
    def default_search_metric(self) -> str:
        return next(iter(self.search_metrics), "")

    def smoke_overrides(self, space_args: list[str]) -> list[str]:
        """The smoke test's ``--space`` overrides for this study, less those whose dimension
        the user's own ``space_args`` (``NAME=SPEC`` strings) name: the user's win."""
        named = {x.split("=", 1)[0] for x in space_args}
        return [x for x in self.smoke_space if x.split("=", 1)[0] not in named]


# CoLA: MCC is 0 for every classifier that predicts one class, so early rungs of a sweep are
# ties; the probability-based scores separate such trials (see README, "Choosing --metric").
COLA_SEARCH = {"auc": ("best_val_auc", "max"), "soft_mcc": ("best_val_soft_mcc", "max"),
               "mcc": ("best_val_mcc", "max"), "loss": ("best_val_loss", "min")}
CNNDM_SEARCH = {"loss": ("best_val_loss", "min")}


def _cola_adapter(method: str, module, config_cls, build_model, space_module, *,
                  size_dim: str | None = None, packed: PackedMethod | None = None) -> Study:
    return Study(f"cola_{method}", module.setup, space_module.SPACE, config_cls,
                 metric="best_val_mcc", mode="max", report_metric="dev_mcc",
                 search_metrics=COLA_SEARCH, build_model=build_model, size_dim=size_dim,
                 smoke_space=tuple(getattr(space_module, "SMOKE", ())), packed=packed)


def adapter_methods() -> list[str]:
    """The CoLA adapter methods ``search/cola_lora.py --method`` offers."""
    return [n.removeprefix("cola_") for n, s in STUDIES.items() if s.build_model is not None]


def _cnndm(method: str, module, config_cls, space) -> Study:
    return Study(f"cnndm_{method}", module.setup, space, config_cls,
                 metric="best_val_loss", mode="min", report_metric="test_loss",
                 report_columns=CNNDM_REPORT, report_split="the test split",
                 retrain_weights="the best epoch's weights, by validation loss",
                 search_metrics=CNNDM_SEARCH, trainable_counts=module.trainable_counts,
                 smoke_space=tuple(cnndm_space.SMOKE.get(method, ())))


def summarization_methods() -> dict[str, str]:
    """--method name -> study name, for ``search/cnndm_summarize.py``."""
    return {n.removeprefix("cnndm_").replace("_", "-"): n for n, s in STUDIES.items()
            if s.trainable_counts is not None}


STUDIES: dict[str, Study] = {
    "cola_lora": _cola_adapter("lora", cola_lora, cola_lora.ColaLoraConfig,
                               cola_lora.build_lora_model, cola_lora_space, size_dim="lora_r",
                               packed=LORA),
    "cola_ia3": _cola_adapter("ia3", cola_ia3, cola_ia3.ColaIA3Config, cola_ia3.build_ia3_model,
                              cola_ia3_space, packed=IA3),
    "cola_dora": _cola_adapter("dora", cola_dora, cola_dora.ColaDoraConfig,
                               cola_dora.build_dora_model, cola_dora_space, size_dim="lora_r",
                               packed=DORA),
    "cola_kd": Study("cola_kd", cola_kd.setup, cola_kd_space.SPACE, cola_kd.ColaKDConfig,
                     metric="best_val_mcc", mode="max", report_metric="dev_mcc",
                     search_metrics=COLA_SEARCH),
    "cnndm_prompt": _cnndm("prompt", summarize_prompt, summarize_prompt.SumPromptConfig,
                           cnndm_space.PROMPT),
    "cnndm_lora": _cnndm("lora", summarize_lora, summarize_lora.SumLoraConfig,
                         cnndm_space.LORA),
    "cnndm_last_layers": _cnndm("last_layers", summarize_last_layers,
                                summarize_last_layers.SumLastLayersConfig,
                                cnndm_space.LAST_LAYERS),
}


def get_study(name: str) -> Study:
    return STUDIES[name]
