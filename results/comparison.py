"""A command's comparison table (``comparison.csv``: one row per method or model,
``<col>_mean`` / ``<col>_sd`` / ``n_seeds``) and its charts: the summarization methods side by
side, teacher and students with the distillation verdict; drawn by the commands and again by
the report. ROUGE-1/2/L share one grouped chart, so that equal scores read as equal bars
rather than as two identical charts."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

# column -> (label, higher is better: True / False / None = neither)
LABELS = {
    "test_loss": ("test loss", False),
    "trainable_params": ("trainable parameters", None),
    "mean_train_s": ("seconds per training epoch", False),
    # the peak above the loaded model: activations, gradients, optimizer state
    "max_train_mem_mb": ("MiB training adds to the model", False),
    "max_peak_mem_mb": ("peak MiB of the trial process", False),
    "dev_mcc": ("dev MCC", True),
    "dev_accuracy": ("dev accuracy", True),
}
# Measures computed over the test articles (the others are per training run).
_ON_ARTICLES = {"test_loss"}
ROUGE = (("test_rouge1", "ROUGE-1"), ("test_rouge2", "ROUGE-2"), ("test_rougeL", "ROUGE-L"))
COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]


def best_configuration_table(experiments: list[tuple[str, Path, list[str]]],
                             columns: list[str], *, label: str = "method") -> pd.DataFrame:
    """One row per experiment (``(label value, experiment dir, hyperparameter names)``): its
    best retrained configuration (rank 1) with ``n_seeds``, the hyperparameters, and
    ``<col>_mean`` / ``<col>_sd`` over its seeds of each of ``columns`` it has. Experiments
    without a finished retrain are left out."""
    rows = []
    for value, exp_dir, hparams in experiments:
        runs_csv = Path(exp_dir) / "retrain_runs.csv"
        if not runs_csv.is_file():
            continue
        runs = pd.read_csv(runs_csv)
        best = runs[runs["rank"] == 1]
        if best.empty:
            continue
        row = {label: value, "n_seeds": len(best),
               **{k: best[k].iloc[0] for k in hparams if k in best}}
        for col in columns:
            if col in best:
                row[f"{col}_mean"] = float(best[col].mean())
                row[f"{col}_sd"] = float(best[col].std(ddof=1)) if len(best) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _note(table: pd.DataFrame, what: str) -> str:
    seeds = sorted({int(n) for n in table.get("n_seeds", pd.Series(dtype=int)).dropna()})
    n = "/".join(map(str, seeds)) or "?"
    return f"{what}\nmean of n = {n} seed(s)" + (", whiskers: sd" if max(seeds or [1]) > 1
                                                else " (one seed: no spread)")


def _errors(table: pd.DataFrame, col: str):
    sd = table.get(f"{col}_sd")
    if sd is None or sd.isna().all():
        return None  # one seed: no whisker and no cap pretending there is a spread
    return sd.fillna(0.0).to_numpy()


def rouge_chart(table: pd.DataFrame, label: str, *, about: str = ""):
    plt = _plt()
    present = [(c, n) for c, n in ROUGE if f"{c}_mean" in table]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(present))
    for i, (_, row) in enumerate(table.iterrows()):
        means = [row[f"{c}_mean"] for c, _ in present]
        sds = [row.get(f"{c}_sd") for c, _ in present]
        err = None if all(s is None or (isinstance(s, float) and math.isnan(s)) for s in sds) \
            else [0.0 if s is None or math.isnan(s) else s for s in sds]
        ax.bar(x + (i - (len(table) - 1) / 2) * width, means, width, yerr=err,
               capsize=3 if err else 0, label=str(row[label]), color=COLOURS[i % len(COLOURS)])
    ax.set_xticks(x, [n for _, n in present])
    ax.set_ylim(bottom=0)  # F-measures: 0 is the floor, never -0.04
    ax.set_ylabel("F-measure (higher is better)", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title(_note(table, "ROUGE on the test split" + about), fontsize=8)
    fig.tight_layout()
    return fig


def metric_chart(table: pd.DataFrame, col: str, label: str, *, about: str = ""):
    plt = _plt()
    text, higher = LABELS.get(col, (col, None))
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    means = table[f"{col}_mean"]
    err = _errors(table, col)
    names = table[label].astype(str)
    if col.endswith("loss"):
        # A loss has no meaningful zero: points (with sd whiskers) on an axis that fits them,
        # so that 5.22 against 5.48 is visible; bars from 0 would hide it.
        for i, (x, m) in enumerate(zip(names, means)):
            ax.errorbar([x], [m], yerr=None if err is None else [err[i]], fmt="o", ms=8,
                        capsize=4 if err is not None else 0, color=COLOURS[i % len(COLOURS)])
        ax.margins(x=0.3)
    else:
        ax.bar(names, means, yerr=err, capsize=4 if err is not None else 0,
               color=COLOURS[: len(table)])
    if col.endswith("loss"):
        pass
    elif col == "trainable_params":
        ax.set_yscale("log")
    elif (means.dropna() >= 0).all():
        ax.set_ylim(bottom=0)
    note = "" if higher is None else (" (higher is better)" if higher else " (lower is better)")
    ax.set_ylabel(text, fontsize=8)
    ax.set_title(_note(table, text + note + about), fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def comparison_charts(table: pd.DataFrame, out_dir: Path, *, label: str = "method",
                      prefix: str = "comparison_", about: str = "") -> list[str]:
    """Write the charts into ``out_dir``; -> their file names. ``about``: appended to every
    title (e.g. how many test articles)."""
    if table is None or table.empty or label not in table:
        return []
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    figs = []
    if any(f"{c}_mean" in table for c, _ in ROUGE):
        figs.append(("rouge", rouge_chart(table, label, about=about)))
    for col in LABELS:
        if f"{col}_mean" in table and table[f"{col}_mean"].notna().any():
            figs.append((col, metric_chart(table, col, label,
                                           about=about if col in _ON_ARTICLES else "")))
    for key, fig in figs:
        path = out_dir / f"{prefix}{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        names.append(path.name)
    return names


def compare_methods(experiments: list[tuple[str, Path, list[str]]], out_dir: Path, *,
                    columns: tuple, n_articles: int | None = None) -> pd.DataFrame:
    """One table across methods (best configuration of each, mean ± sd over retrain seeds),
    written to ``out_dir/comparison.csv`` with its charts, and printed. ``experiments``:
    (method, experiment dir, space names); ``columns``: (retrain column, label, higher is
    better); ``n_articles``: how many test articles ROUGE rests on (recorded in the table)."""
    from results.tables import mean_sd

    table = best_configuration_table(experiments, [col for col, _, _ in columns])
    if table.empty:
        print("\n== Comparison: no finished retrains", flush=True)
        return table
    if n_articles:
        table["rouge_articles"] = n_articles
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "comparison.csv", index=False)
    charts = comparison_charts(table, out_dir, about=f", {n_articles} articles" if n_articles
                               else "")
    show = pd.DataFrame({"method": table["method"], "seeds": table["n_seeds"]})
    for col, label, _ in columns:
        if f"{col}_mean" in table:
            mean, sd = table[f"{col}_mean"], table[f"{col}_sd"]
            show[label] = [mean_sd(m, s) for m, s in zip(mean, sd)]
    print("\n== Methods compared on the test split (best configuration each, mean ± sd over "
          "seeds)", flush=True)
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(show.to_string(index=False), flush=True)
    print(f"table: {out_dir / 'comparison.csv'}; charts: {', '.join(charts)}", flush=True)
    return table


def kd_verdict(gain: float, sd: float) -> str:
    """Better, worse or within noise: the KD student's mean MCC against the scratch student's,
    in units of their pooled seed standard deviation."""
    if math.isnan(sd):
        return "no seed spread to judge by (one seed each)"
    if gain > 2 * sd:
        return "the KD student is better (the gain exceeds 2 pooled sd)"
    if gain < -2 * sd:
        return "the KD student is worse (the loss exceeds 2 pooled sd)"
    return "within noise (|gain| <= 2 pooled sd)"


def distillation_table(rows: list[dict], out_dir: Path, *, split: str) -> pd.DataFrame:
    """Teacher and students side by side (``rows``: model, n_seeds, dev accuracy and MCC mean
    and sd, params, size_mb, cpu_sentences_per_s, agreement), written to
    ``out_dir/comparison.csv`` and printed, with the KD gain in dev MCC against the scratch
    student judged by their pooled seed sd."""
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "comparison.csv", index=False)
    from results.tables import mean_sd

    show = table[["model", "n_seeds", "params", "size_mb", "cpu_sentences_per_s",
                  "agreement"]].copy()
    for c in ("dev_mcc", "dev_accuracy"):  # inserted in front of each other: accuracy first
        show.insert(2, c, [mean_sd(m, s) for m, s in zip(table[f"{c}_mean"], table[f"{c}_sd"])])
    print(f"\n== Teacher vs students on {split} (students: best configuration, mean ± sd over "
          "seeds, last epoch)", flush=True)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(show.to_string(index=False), flush=True)
    kd_row = next((r for r in rows if r["model"] == "KD student"), None)
    sc_row = next((r for r in rows if r["model"] == "scratch student"), None)
    if kd_row and sc_row:
        gain = kd_row["dev_mcc_mean"] - sc_row["dev_mcc_mean"]
        sd = math.sqrt((kd_row["dev_mcc_sd"] ** 2 + sc_row["dev_mcc_sd"] ** 2) / 2)
        print(f"KD gain in dev MCC: {gain:+.4f}; pooled seed sd {sd:.4f}: "
              f"{kd_verdict(gain, sd)}", flush=True)
    print(f"table: {out_dir / 'comparison.csv'}", flush=True)
    return table
