"""Per-epoch curves of the retrained configurations, the figures a paper shows: training and
held-out loss, accuracy and MCC per epoch, mean and band (min..max) over seeds, one colour per
configuration. Read from the retrain's own Tune folder (``<experiment>/retrain``), so no Ray is
needed."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from results.frames import read_trials

# The held-out split a retrain reports on, in the order looked for.
_SPLITS = ("dev", "test", "val")
_MEASURES = (("loss", "loss"), ("accuracy", "accuracy"), ("mcc", "MCC"))


def retrain_epochs(exp_dir: str | Path) -> pd.DataFrame:
    """One row per retrain job and epoch: rank, seed, epoch and every metric reported."""
    root = Path(exp_dir) / "retrain"
    if not root.is_dir():
        return pd.DataFrame()
    rows = []
    for t in read_trials(root):
        job = t.config.get("job") or {}
        for r in t.rows:
            if not isinstance(r.get("epoch"), int):
                continue
            rows.append({"rank": job.get("_rank"), "seed": job.get("seed"),
                         "job": job.get("_job"), **{k: v for k, v in r.items()
                                                    if isinstance(v, (int, float))}})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # The final-evaluation row (a retrain's extra row for its best-epoch weights) repeats the
    # epoch of the last one: keep one row per job and epoch, the first.
    return df.drop_duplicates(["job", "epoch"], keep="first").sort_values(["rank", "seed", "epoch"])


def panels(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """[(label, train column, held-out column)] that the frame has."""
    out = []
    for key, label in _MEASURES:
        held = next((f"{s}_{key}" for s in _SPLITS if f"{s}_{key}" in frame), None)
        if held or f"train_{key}" in frame:
            out.append((label, f"train_{key}", held))
    return out


def retrain_curves(frame: pd.DataFrame, *, top: int = 3):
    """The figure: one panel per measure; training dashed, held-out solid; mean over seeds with
    a min..max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = panels(frame)
    fig, axes = plt.subplots(1, max(len(ps), 1), figsize=(4.3 * max(len(ps), 1), 3.6),
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    ranks = sorted(frame["rank"].dropna().unique())[:top]
    for ax, (label, train_col, held_col) in zip(axes.flat, ps):
        for i, rank in enumerate(ranks):
            g = frame[frame["rank"] == rank]
            n = g["seed"].nunique()
            for col, style, what in ((train_col, "--", "train"), (held_col, "-", held_col)):
                if not col or col not in g or g[col].isna().all():
                    continue
                stats = g.groupby("epoch")[col].agg(["mean", "min", "max"])
                name = what.split("_")[0] if what != "train" else "train"
                ax.plot(stats.index, stats["mean"], style, marker="o", ms=3,
                        color=colours(i), label=f"#{int(rank)} {name} (n = {n} seeds)")
                if n > 1:
                    ax.fill_between(stats.index, stats["min"], stats["max"], color=colours(i),
                                    alpha=0.15, lw=0)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_xticks(sorted(frame["epoch"].unique()))
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    seeds = frame.groupby("rank")["seed"].nunique()
    fig.suptitle(f"retrained configurations: mean over seeds (n = "
                 f"{'/'.join(str(int(v)) for v in seeds.iloc[:top])}), band = min..max; "
                 "training (dashed: measured while training, dropout on) vs held-out (solid)",
                 fontsize=8)
    fig.tight_layout()
    return fig
