"""What a study's command hands the shared run (``search.cli.run``): the sweeps it runs
(``Variant``: a study and search-space overrides) and what its ``prepare`` loaded and checked
(``Prepared``: the data, the fixed config, the plan's description, hooks)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Variant:
    """One sweep of a command: which study, and search-space overrides on top of its space
    (e.g. the distillation study with kd_fraction fixed at 1 is its scratch baseline)."""

    study: str
    overrides: dict


@dataclass
class Prepared:
    """What a study's ``prepare`` returns: the data for every trial and the fixed config."""

    data: object
    fixed: dict  # config fields shared by all trials (model path, targets, ...)
    describe: dict  # for the plan and experiment.json
    finalize: Callable[[Path], None] | None = None  # copies smoke-test artefacts into exp dir
    after: Callable[[list], None] | None = None  # given [(plan, retrain summary)] at the end
    extra: dict = field(default_factory=dict)  # recorded in experiment.json only
    # (study name, space, fixed) -> a trial's peak memory (search.memory.Estimate); None: not
    # estimated
    memory: Callable[[str, dict, dict], object] | None = None
    # (study, space, fixed, k) -> the packed engine's peak memory with k slots
    # (search.memory.packed_estimate); None: the study is not packed
    packed_memory: Callable[[object, dict, dict, int], object] | None = None
    # where the model can be read while the sweep is planned (a smoke test's tiny model moves
    # into the experiment only once the plan stands); None: fixed["model"]
    model_while_planning: str | None = None
    train_rows: int | None = None  # rows a sweep trial trains on: the largest sensible batch
    report_split: str | None = None  # where retrains are reported, when not the study's usual
    # (study name, space) -> the largest trainable-parameter count a trial can draw: the size
    # of its checkpoints in the disk plan (search.disk); None: small files only
    trainable: Callable[[str, dict], int] | None = None
