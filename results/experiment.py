"""One experiment directory, read whole and tolerantly: its record (``experiment.json``),
trial and epoch tables, retrain tables and any comparison table, plus a list of problems found
(a damaged directory is described, never a crash). No Ray needed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from results.frames import epoch_frame, hyperparameters, read_trials, sweep_times, trial_frame
from results.space import parse_space

# Metric of each study when a directory has lost its experiment.json.
_GUESS = (("best_val_mcc", "max"), ("best_val_loss", "min"))


@dataclass
class Experiment:
    path: Path
    record: dict
    metric: str
    mode: str
    space: dict
    trials: pd.DataFrame
    epochs: pd.DataFrame
    retrain: pd.DataFrame | None = None  # mean ± sd per configuration
    retrain_runs: pd.DataFrame | None = None
    comparison: pd.DataFrame | None = None  # KD or summarization comparison of the command
    comparison_path: Path | None = None
    span_s: float | None = None  # first trial start to last result (downtime included)
    active_s: float | None = None  # time with at least one trial computing an epoch
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def study(self) -> str:
        return self.record.get("study", "unknown")

    @property
    def gpu_hours(self) -> float:
        gpt = float(self.record.get("gpus_per_trial") or 0)
        if not gpt or "wall_s" not in self.trials:
            return 0.0
        return float(self.trials["wall_s"].fillna(0).sum()) * gpt / 3600


def is_experiment(path: Path) -> bool:
    return path.is_dir() and ((path / "experiment.json").is_file() or any(
        (d / "params.json").is_file() or (d / "result.json").is_file()
        for d in path.iterdir() if d.is_dir()))


def group_members(path: Path) -> list[Path]:
    """The experiments one command wrote beside a group folder (the summarization command's
    ``<storage>/<name>/`` holds ``comparison.csv``; its methods are ``<storage>/<name>-<method>``,
    or folders inside it), found by the ``group`` their ``experiment.json`` records."""
    path = Path(path)
    out = []
    for d in sorted([*path.parent.iterdir(), *path.iterdir()] if path.is_dir() else []):
        if d == path or not d.is_dir():
            continue
        try:
            record = json.loads((d / "experiment.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and record.get("group") == path.name:
            out.append(d)
    return out


def _read_csv(path: Path, problems: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        # trial ids as text: an id of digits only would be read as a number
        return pd.read_csv(path, dtype={"trial_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        problems.append(f"{path}: unreadable ({type(e).__name__}); left out")
        return None


def _read_record(path: Path, problems: list[str]) -> dict:
    """experiment.json as a dict; {} (with the problem noted) when it is missing, unreadable,
    or holds something other than a JSON object (or its space something other than one)."""
    file = path / "experiment.json"
    try:
        record = json.loads(file.read_text())
    except FileNotFoundError:
        problems.append(f"{file} is missing: study, command and search space are unknown; the "
                        "metric is guessed from the results")
        return {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{file} is unreadable ({type(e).__name__}): study, command and search "
                        "space are unknown")
        return {}
    if not isinstance(record, dict):
        problems.append(f"{file} holds a JSON {type(record).__name__}, not an experiment record "
                        "(an object): study, command and search space are unknown")
        return {}
    if not isinstance(record.get("space", {}), dict):
        problems.append(f"{file}: its space is a JSON {type(record['space']).__name__}, not an "
                        "object of dimensions: the search space is unknown")
        record = {k: v for k, v in record.items() if k != "space"}
    return record


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    problems: list[str] = []
    record = _read_record(path, problems)
    if not list(path.glob("experiment_state-*.json")):
        problems.append(f"{path} has no experiment-state file (experiment_state-*.json): Tune "
                        "cannot resume it, and trial statuses come from the trial folders alone")
    records = read_trials(path)
    for r in records:
        problems.extend(r.problems)
    params = hyperparameters(path, records)
    epochs = epoch_frame(path, records=records, params=params)
    metric, mode = record.get("metric"), record.get("mode")
    if not metric:
        metric, mode = next(((m, md) for m, md in _GUESS if m in epochs), ("best_val_mcc", "max"))
    trials = trial_frame(path, metric=metric, mode=mode, records=records, params=params)
    for _, t in trials.iterrows():
        if t.get("status") in ("failed", "interrupted") and not t.get("epochs_run"):
            problems.append(f"trial {t['trial_id']}: no results ({t['status']})")
    times = sweep_times(records)
    exp = Experiment(path=path, record=record, metric=metric, mode=mode or "max",
                     space=parse_space(record.get("space", {})), trials=trials, epochs=epochs,
                     span_s=times["elapsed_s"], active_s=times["active_s"],
                     problems=problems)
    exp.retrain = _read_csv(path / "retrain.csv", problems)
    exp.retrain_runs = _read_csv(path / "retrain_runs.csv", problems)
    # A command's comparison table lives in its main experiment dir (KD: this one; summarization:
    # <storage>/<group>/, next to the per-method experiments).
    group = record.get("group")
    for candidate in [path / "comparison.csv"] + ([path.parent / group / "comparison.csv"]
                                                  if group else []):
        if candidate.is_file():
            exp.comparison = _read_csv(candidate, problems)
            exp.comparison_path = candidate
            break
    return exp
