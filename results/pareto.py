"""Trade-offs: the non-dominated (Pareto-optimal) configurations of a table for two or more
objectives, and a figure of two of them with the front marked.

The front is computed here rather than through Optuna: Optuna's is a method of a study's
multi-objective trials, and these tables (trials of a single-objective sweep, a comparison
across methods) are not studies; pandas and numpy offer no dominance filter.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def non_dominated(df: pd.DataFrame, objectives: dict[str, str]) -> pd.Series:
    """True for each row no other row dominates: at least as good in every objective
    (``"max"`` or ``"min"``) and strictly better in one. Rows missing a value are False."""
    cols = list(objectives)
    ok = df[cols].notna().all(axis=1).to_numpy()
    # Every objective as "larger is better".
    v = np.column_stack([df[c].to_numpy(float) * (1 if m == "max" else -1)
                         for c, m in objectives.items()])
    front = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(ok):
        others = v[ok]
        dominated = ((others >= v[i]).all(axis=1) & (others > v[i]).any(axis=1)).any()
        front[i] = not dominated
    return pd.Series(front, index=df.index)


def pareto_figure(df: pd.DataFrame, *, x: str, y: str, modes: dict[str, str], label: str | None,
                  title: str, xlog: bool = False):
    """Scatter of ``y`` against ``x`` with the non-dominated rows marked and joined; the
    title states how many points it rests on."""
    from results.plots import _plt

    plt = _plt()
    d = df.dropna(subset=[x, y])
    front = non_dominated(d, {x: modes[x], y: modes[y]})
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.scatter(d.loc[~front, x], d.loc[~front, y], c="0.6", s=22, label="dominated")
    f = d[front].sort_values(x)
    ax.plot(f[x], f[y], "o-", c="C3", ms=6, label="non-dominated")
    if label:
        for _, r in f.iterrows():
            ax.annotate(str(r[label]), (r[x], r[y]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    if xlog:
        ax.set_xscale("log")
    arrow = {"max": "higher is better", "min": "lower is better"}
    ax.set_xlabel(f"{x} ({arrow[modes[x]]})")
    ax.set_ylabel(f"{y} ({arrow[modes[y]]})")
    ax.set_title(f"{title} (n = {len(d)})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
