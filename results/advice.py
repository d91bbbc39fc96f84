"""What the report may advise, and only with the evidence for it: "widen the space" where the
best trial sits at an edge that can move and enough trials support it, and fANOVA importances
only from enough trials. Each returns the advice and a sentence saying what it rests on (or why
there is none)."""
from __future__ import annotations

import math

import pandas as pd

from results.space import swept
from spaces.dims import LIMITS, Choice, LogUniform, Uniform

# Below these, the report gives no edge advice and no importances, and says why: with a
# handful of trials the best one's position, and a random forest's variance split, are noise.
MIN_EDGE_TRIALS = 8
MIN_IMPORTANCE_TRIALS = 10


def position(dim, value) -> float | None:
    """Where ``value`` sits in the dimension, 0 (low edge) .. 1 (high edge)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = None
    if isinstance(dim, LogUniform) and v and v > 0:
        return (math.log(v) - math.log(dim.low)) / (math.log(dim.high) - math.log(dim.low))
    if isinstance(dim, Uniform) and v is not None:
        return (v - dim.low) / (dim.high - dim.low)
    if isinstance(dim, Choice):
        values = list(dim.values)
        hit = next((i for i, c in enumerate(values) if c == value or
                    (v is not None and isinstance(c, (int, float)) and c == v)), None)
        return None if hit is None else hit / max(len(values) - 1, 1)
    return None


def can_move(name: str, dim, edge: str) -> bool:
    """Whether the space could be widened past ``edge`` ("lower"/"upper") of ``dim``."""
    lo, hi = LIMITS.get(name, (-math.inf, math.inf))
    if isinstance(dim, LogUniform):
        lo = max(lo, 0.0)
    bound = (dim.low if edge == "lower" else dim.high) if not isinstance(dim, Choice) else \
        (min(dim.values) if edge == "lower" else max(dim.values))
    return bound > lo if edge == "lower" else bound < hi


def _valued(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    ok = trials[trials[metric].notna()] if metric in trials else trials.iloc[0:0]
    if "status" in ok:
        ok = ok[ok["status"] != "failed"]
    return ok


def edge_flags(trials: pd.DataFrame, space: dict, *, metric: str, mode: str,
               margin: float = 0.1, min_trials: int = 0) -> dict[str, str]:
    """{hyperparameter: "lower" | "upper"} where the best trial's value lies within ``margin``
    of a range's edge (on its own scale), or is the first / last of an ordered numeric choice
    of >= 3 values; only where that edge can move (``spaces.dims.LIMITS``), and only when the
    best value is not shared by a trial away from that edge (a tie is no evidence)."""
    ok = _valued(trials, metric)
    if ok.empty or len(ok) < min_trials:
        return {}
    ok = ok.sort_values(metric, ascending=(mode == "min"))
    best = ok.iloc[0]
    tied = ok[ok[metric] == best[metric]]
    flags = {}
    for name, dim in swept(space).items():
        if isinstance(dim, Choice) and (len(dim.values) < 3 or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) for c in dim.values)
                or list(dim.values) != sorted(dim.values)):
            continue
        edge = _edge(dim, position(dim, best.get(name)), margin)
        if edge is None or not can_move(name, dim, edge):
            continue
        if any(_edge(dim, position(dim, v), margin) != edge for v in tied[name]):
            continue
        flags[name] = edge
    return flags


def _edge(dim, pos: float | None, margin: float) -> str | None:
    if pos is None:
        return None
    if isinstance(dim, Choice):
        return "lower" if pos == 0 else "upper" if pos == 1 else None
    return "lower" if pos <= margin else "upper" if pos >= 1 - margin else None


def edge_advice(trials: pd.DataFrame, space: dict, *, metric: str, mode: str
                ) -> tuple[dict[str, str], str]:
    """-> (flags, the sentence the report prints about them)."""
    n = len(_valued(trials, metric))
    if n < MIN_EDGE_TRIALS:
        return {}, (f"No advice on the ranges: {n} trials with a value, fewer than the "
                    f"{MIN_EDGE_TRIALS} needed before the best trial's position means anything.")
    flags = edge_flags(trials, space, metric=metric, mode=mode, min_trials=MIN_EDGE_TRIALS)
    if not flags:
        return {}, (f"No best value at an edge of its range that the space could move past "
                    f"(n = {n} trials).")
    return flags, f"From n = {n} trials:"


def importance_evidence(trials: pd.DataFrame, metric: str) -> str | None:
    """None when there are enough trials for importances, else why they are left out."""
    n = len(_valued(trials, metric))
    if n < MIN_IMPORTANCE_TRIALS:
        return (f"Importances left out: {n} trials with a value, fewer than the "
                f"{MIN_IMPORTANCE_TRIALS} fANOVA needs before its variance split is more than "
                "noise.")
    return None
