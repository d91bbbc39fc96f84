"""Seed summaries: retrained configurations as numbers (mean, sd and n apart, as
``retrain.csv`` stores them) and their display form ("mean ± sd"), which only the console and
the report use."""
from __future__ import annotations

import math
import re

import pandas as pd


def summarize_seeds(runs: pd.DataFrame, hparam_names: list[str],
                    pattern: str = r"^dev(_in|_out)?_(accuracy|mcc)$") -> pd.DataFrame:
    """One row per configuration (``rank``): ``n_seeds``, the hyperparameters, and
    ``<col>_mean`` / ``<col>_sd`` (NaN with one seed) of every column matching ``pattern``."""
    if runs.empty:
        return runs
    cols = [c for c in runs.columns if re.match(pattern, c)]
    rows = []
    for rank, g in runs.groupby("rank", sort=True):
        row = {"rank": int(rank), "n_seeds": len(g),
               **{k: g[k].iloc[0] for k in hparam_names if k in g}}
        for c in cols:
            row[f"{c}_mean"] = float(g[c].mean())
            row[f"{c}_sd"] = float(g[c].std(ddof=1)) if len(g) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def measured(summary: pd.DataFrame) -> list[str]:
    """The summarised columns of a seed summary, in order."""
    return [c[:-5] for c in summary.columns if c.endswith("_mean") and f"{c[:-5]}_sd" in summary]


def _num(v: float, digits: int) -> str:
    # Scores (0..1, losses) with fixed decimals; counts, seconds and MiB with significant ones.
    return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:,.0f}"


def mean_sd(mean: float, sd: float, digits: int = 4) -> str:
    """"0.7650 ± 0.0354"; one seed (sd NaN): the mean alone."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return _num(mean, digits)
    return f"{_num(mean, digits)} ± {_num(sd, digits) if abs(mean) < 100 else f'{sd:,.0f}'}"


def display(summary: pd.DataFrame, hparam_names: list[str] = (), *,
            columns: list[str] | None = None, digits: int = 4) -> pd.DataFrame:
    """The summary for reading: rank, seeds, the hyperparameters and one "mean ± sd" text
    column per measured column (``columns``: which; default all)."""
    cols = [c for c in (columns or measured(summary)) if f"{c}_mean" in summary]
    out = summary[[c for c in ("rank", "n_seeds", *hparam_names) if c in summary]].copy()
    out = out.rename(columns={"n_seeds": "seeds"})
    for c in cols:
        out[c] = [mean_sd(m, s, digits) for m, s in zip(summary[f"{c}_mean"], summary[f"{c}_sd"])]
    return out
