"""Figures of one sweep, DataFrame in, matplotlib Figure out (no Ray): learning curves with
ASHA's rungs, one panel per hyperparameter (value vs best metric, edge-of-range flags), and
parallel coordinates of the top trials."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from results.advice import edge_advice, edge_flags, position  # noqa: F401 (edge_flags re-exported)
from results.space import swept
from spaces.dims import Choice, LogUniform


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_epoch_metric(metric: str) -> str:
    """The per-epoch value behind a best-so-far metric: best_val_mcc -> val_mcc."""
    return metric.removeprefix("best_")


def asha_rungs(max_epochs: int, grace_period: int, reduction_factor: float) -> list[int]:
    """Epochs at which ASHA compares trials: grace * rf^k below max_epochs."""
    rungs, t = [], float(grace_period)
    while t < max_epochs and reduction_factor > 1:
        rungs.append(int(round(t)))
        t *= reduction_factor
    return rungs


def _min_span(ax, values, span: float) -> None:
    """At least ``span`` of y axis: a curve that moves by 0.004 is drawn flat, not as a slope
    filling the plot."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi - lo < span:
        mid = (hi + lo) / 2
        ax.set_ylim(mid - span / 2, mid + span / 2)


def learning_curves(epochs: pd.DataFrame, trials: pd.DataFrame, *, metric: str,
                    rungs: list[int] | None = None):
    """Every trial's per-epoch metric on one axis. Trials that ran to the end are solid and
    coloured, trials the scheduler stopped are dashed in shades of grey ending in an x (each
    its own shade); curves are nudged sideways a little so that equal values stay visible as
    several lines; ASHA's rungs (when given) are dotted."""
    plt = _plt()
    col = per_epoch_metric(metric)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    stopped = set(trials.loc[trials["status"] == "stopped", "trial_id"]) if "status" in trials \
        else set()
    if col not in epochs or epochs.empty:
        ax.text(0.5, 0.5, f"no per-epoch {col} reported", ha="center", va="center")
        return fig
    cmap = plt.get_cmap("viridis")
    ids = list(epochs["trial_id"].unique())
    finished = [t for t in ids if t not in stopped]
    grey = [t for t in ids if t in stopped]
    markers = "os^Dv<>p"
    for i, (tid, g) in enumerate(epochs.groupby("trial_id", sort=False)):
        g = g.sort_values("epoch")
        x = g["epoch"] + (i - (len(ids) - 1) / 2) * min(0.04, 0.25 / max(len(ids), 1))
        if tid in stopped:
            k = grey.index(tid) / max(len(grey) - 1, 1)
            shade = str(0.35 + 0.35 * k)
            ax.plot(x, g[col], ls="--", color=shade, lw=1, marker=".", ms=4)
            ax.plot(x.iloc[-1:], g[col].iloc[-1:], "x", color=shade, ms=7)
        else:
            k = finished.index(tid) / max(len(finished) - 1, 1)
            ax.plot(x, g[col], "-", marker=markers[finished.index(tid) % len(markers)], ms=4,
                    lw=1.6, color=cmap(k), label=str(tid))
    for r in rungs or []:
        ax.axvline(r, ls=":", color="0.3", lw=1)
        ax.text(r, 1.0, f" rung {r}", transform=ax.get_xaxis_transform(), fontsize=7,
                va="top", color="0.3")
    _min_span(ax, epochs[col], 0.05 if "loss" not in col else 0.1)
    ax.set_xlabel("epoch (lines nudged apart)")
    ax.set_ylabel(col)
    ax.set_xticks(sorted(epochs["epoch"].unique()))
    ax.set_title(f"{col} per epoch, n = {len(ids)} trials: {len(finished)} ran to the end "
                 f"(colour), {len(stopped)} stopped early (grey, x)", fontsize=9)
    if 0 < len(finished) <= 10:
        ax.legend(fontsize=7, title="trial", title_fontsize=7, loc="best")
    fig.tight_layout()
    return fig


_position = position


def hyperparameter_panels(trials: pd.DataFrame, space: dict, *, metric: str, mode: str):
    """One panel per swept hyperparameter: its value vs the trial's best metric; log axis for
    log ranges; the best trial ringed; a red note where the best sits at the range's edge."""
    plt = _plt()
    dims = swept(space)
    n = max(len(dims), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    flags, _ = edge_advice(trials, space, metric=metric, mode=mode)
    ok = trials[trials[metric].notna()] if metric in trials else trials.iloc[0:0]
    best = ok.sort_values(metric, ascending=(mode == "min")).head(1)
    for ax, (name, dim) in zip(axes.flat, dims.items()):
        col = name
        if col not in ok:
            ax.set_visible(False)
            continue
        if isinstance(dim, Choice):
            pos = {c: i for i, c in enumerate(dim.values)}
            x = ok[col].map(lambda v: pos.get(v, pos.get(_num(v), np.nan)))
            bx = best[col].map(lambda v: pos.get(v, pos.get(_num(v), np.nan)))
            ax.set_xticks(range(len(dim.values)), [str(c) for c in dim.values])
            ax.set_xlim(-0.5, len(dim.values) - 0.5)
        else:
            x, bx = ok[col].astype(float), best[col].astype(float)
            if isinstance(dim, LogUniform):
                ax.set_xscale("log")
            ax.set_xlim(dim.low, dim.high) if not isinstance(dim, LogUniform) else \
                ax.set_xlim(dim.low / 1.15, dim.high * 1.15)
        stopped = (ok["status"] == "stopped") if "status" in ok else pd.Series(False, index=ok.index)
        ax.scatter(x[~stopped], ok.loc[~stopped, metric], s=22, label="ran to the end")
        ax.scatter(x[stopped], ok.loc[stopped, metric], s=22, marker="x", color="0.5",
                   label="stopped early")
        ax.scatter(bx, best[metric], s=120, facecolors="none", edgecolors="red", lw=1.5)
        title = name + ("  (log)" if isinstance(dim, LogUniform) else "")
        if name in flags:
            title += f"\nbest at the {flags[name]} edge: widen the range"
        ax.set_title(title, fontsize=9, color="red" if name in flags else "black")
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"n = {len(ok)} trials with a value", fontsize=9)
    for ax in list(axes.flat)[len(dims):]:
        ax.set_visible(False)
    if dims:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _num(v):
    try:
        f = float(v)
        return int(f) if f.is_integer() else f
    except (TypeError, ValueError):
        return v


def parallel_coordinates(trials: pd.DataFrame, space: dict, *, metric: str, mode: str,
                         top: int = 10):
    """The top trials as lines across one axis per swept hyperparameter (scaled to its range,
    log ranges on a log scale, choices by position) and a last axis for the metric; colour =
    metric."""
    plt = _plt()
    dims = swept(space)
    ok = trials[trials[metric].notna()] if metric in trials else trials.iloc[0:0]
    ok = ok.sort_values(metric, ascending=(mode == "min")).head(top)
    fig, ax = plt.subplots(figsize=(1.3 * (len(dims) + 1) + 2, 4))
    names = list(dims) + [metric]
    if ok.empty:
        ax.text(0.5, 0.5, "no trial with a value", ha="center")
        return fig
    lo, hi = ok[metric].min(), ok[metric].max()
    span = (hi - lo) or 1.0
    cmap = plt.get_cmap("viridis" if mode == "max" else "viridis_r")
    for _, row in ok.iterrows():
        ys = [_position(dims[n], row.get(n)) for n in dims]
        ys.append((row[metric] - lo) / span)
        ys = [np.nan if y is None else y for y in ys]
        ax.plot(range(len(names)), ys, "-o", ms=3, lw=1.4,
                color=cmap((row[metric] - lo) / span), alpha=0.9)
    for i, n in enumerate(names):
        ax.axvline(i, color="0.7", lw=0.8)
        if n in dims:
            d = dims[n]
            low = f"{d.low:g}" if hasattr(d, "low") else str(d.values[0])
            high = f"{d.high:g}" if hasattr(d, "high") else str(d.values[-1])
        else:
            low, high = f"{lo:.3g}", f"{hi:.3g}"
        ax.text(i, -0.08, low, ha="center", va="top", fontsize=7)
        ax.text(i, 1.08, high, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, lo + span))
    fig.colorbar(sm, ax=ax, pad=0.02, fraction=0.04).set_label(metric, fontsize=8)
    ax.set_title(f"top {len(ok)} of n = {int(trials[metric].notna().sum())} trials by {metric}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def importance_bar(importance: pd.DataFrame, n_trials: int | None = None):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * max(len(importance), 2) + 1))
    imp = importance.iloc[::-1]
    ax.barh(imp["param"], imp["importance"], color="#4C72B0")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    if n_trials is not None:
        ax.set_title(f"from n = {n_trials} trials", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig
