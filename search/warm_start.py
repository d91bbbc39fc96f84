"""``--warm-start DIR``: the best configurations of an earlier experiment of the same study,
evaluated first by the new sweep's searcher (ray-project/ray#42221 asks Tune for this).

Checked before anything starts: the directory must be an experiment of the same study, and
every chosen configuration must lie inside the current search space, dimension by dimension."""
from __future__ import annotations

import json
import math
from pathlib import Path

from models.errors import InputError
from spaces.dims import Choice, Fixed, LogUniform, Uniform

FLAG = "--warm-start"


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _same(a, b) -> bool:
    """Equal as a search-space value: True is not 1, but 8.0 (read from a CSV) is 8."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _match(dim, value):
    """-> the value as ``dim`` holds it, or None when it lies outside ``dim``."""
    if isinstance(dim, (Uniform, LogUniform)):
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and dim.low <= value <= dim.high)
        return float(value) if ok else None
    if isinstance(dim, Choice):
        return next((c for c in dim.values if _same(value, c)), None)
    return value


def recorded_study(exp_dir: str) -> str:
    """The study an experiment directory belongs to (its experiment.json says)."""
    record_file = Path(exp_dir).expanduser() / "experiment.json"
    if not record_file.is_file():
        raise InputError(f"{FLAG} {exp_dir!r}: not an experiment directory (no experiment.json)")
    try:
        record = json.loads(record_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{FLAG} {exp_dir!r}: experiment.json is unreadable ({e})") from None
    if not isinstance(record, dict):
        raise InputError(f"{FLAG} {exp_dir!r}: experiment.json holds a JSON "
                         f"{type(record).__name__}, not an experiment record (a JSON object "
                         "with the study, its space and settings)")
    return record.get("study")


def check_study(exp_dir: str, studies: list[str]) -> str:
    recorded = recorded_study(exp_dir)
    if recorded not in studies:
        raise InputError(f"{FLAG} {exp_dir!r}: an experiment of study {recorded!r}; this command "
                         f"sweeps {', '.join(repr(s) for s in studies)}")
    return recorded


def warm_start_points(exp_dir: str, metric: str, mode: str, space: dict,
                      top_k: int) -> list[dict]:
    """The swept values of the best ``top_k`` finished trials of ``exp_dir`` (by ``metric``),
    as points for the searcher. Fixed dimensions of the current space are left to their value."""
    from results import read_trials, trial_frame

    path = Path(exp_dir).expanduser()
    trials = trial_frame(path, metric=metric, mode=mode, records=read_trials(path))
    ok = trials[trials[metric].notna()] if metric in trials else trials.iloc[0:0]
    if "status" in ok:
        ok = ok[ok["status"] != "failed"]
    if ok.empty:
        raise InputError(f"{FLAG} {exp_dir!r}: no trial there has a value of {metric}")
    searched = {k: d for k, d in space.items() if not isinstance(d, Fixed)}
    points = []
    for _, row in ok.head(top_k).iterrows():
        point = {}
        for name, dim in searched.items():
            col = name
            if col not in row or (isinstance(row[col], float) and math.isnan(row[col])):
                raise InputError(f"{FLAG} {exp_dir!r}: trial {row['trial_id']} has no value for "
                                 f"dimension {name}")
            value = _plain(row[col])
            if _match(dim, value) is None:
                raise InputError(f"{FLAG} {exp_dir!r}: trial {row['trial_id']} has {name} = "
                                 f"{value!r}, outside the current space {dim.describe()}; "
                                 f"widen it with --space {name}=... or lower --warm-start-top")
            point[name] = _match(dim, value)
        points.append(point)
    return points
