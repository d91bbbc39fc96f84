"""The pieces of a report that are tables and text: Markdown tables, the experiment's header
(study, model, data, budget, command, commit, versions, times), the leaderboard with the
majority-class baseline, the retrain and comparison tables, one headline row per experiment
for the side-by-side table, and saving a figure."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from models.console import clock
from results.experiment import Experiment
from results.frames import leaderboard
from results.space import swept

# GLUE CoLA dev: 68.9 % label 1 (used when an experiment did not record its own baseline).
COLA_DEV_MAJORITY = 0.689


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A DataFrame as a Markdown table (no extra dependency)."""
    if df is None or df.empty:
        return "_(empty)_\n"

    def cell(v):
        if isinstance(v, float):
            if math.isnan(v):
                return ""
            # counts that became floats next to an empty cell (parameter counts, epochs)
            return f"{int(v)}" if v.is_integer() and abs(v) >= 1 else floatfmt.format(v)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _duration(s: float | None) -> str:
    return "unknown" if s is None else clock(s)


def times_text(active_s: float | None, elapsed_s: float | None) -> str:
    """The wording the console's leaderboard line uses too."""
    if active_s is None or elapsed_s is None:
        return f"wall time {_duration(elapsed_s)}"
    return f"{clock(active_s)} active compute, {clock(elapsed_s)} elapsed"


def save_figure(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def baseline_row(exp: Experiment) -> dict | None:
    """The majority-class row for CoLA studies (accuracy = majority share, MCC 0)."""
    if not exp.study.startswith("cola") and "mcc" not in exp.metric:
        return None
    base = exp.record.get("majority_baseline") or {"val_accuracy": None,
                                                   "dev_accuracy": COLA_DEV_MAJORITY}
    return {"trial_id": "majority class (baseline)", exp.metric: 0.0,
            "last_val_accuracy": base.get("val_accuracy"), "last_val_mcc": 0.0,
            "dev_accuracy": base.get("dev_accuracy")}


def _search(record: dict, fixed: dict) -> str:
    """The searcher, its seed and the scheduler, as the sweep recorded them (experiments from
    before the choice existed ran Optuna TPE + ASHA)."""
    if record.get("search"):
        return record["search"]
    return (f"Optuna TPE (seed {fixed.get('seed', '?')}) + ASHA (grace "
            f"{record.get('grace_period', '?')}, reduction {record.get('reduction_factor', '?')})")


def _stopper(record: dict) -> str:
    return {"asha": "ASHA", "hyperband": "HyperBand", "median": "the median rule",
            "none": "nothing"}.get(record.get("scheduler", "asha"), "the scheduler")


def header(exp: Experiment) -> str:
    r, t = exp.record, exp.trials
    finished = int((t["status"] == "completed").sum()) if "status" in t else 0
    stopped = int((t["status"] == "stopped").sum()) if "status" in t else 0
    fixed = r.get("fixed", {})
    lines = [
        f"- **study**: {exp.study} — metric `{exp.metric}` ({exp.mode})",
        f"- **model**: {r.get('model', fixed.get('model', 'unknown'))}",
        f"- **data**: {r.get('data', 'unknown')}" + (f" — {r['rows']}" if r.get("rows") else ""),
        f"- **budget**: {len(t)} trials ({finished} ran to the end, {stopped} stopped by "
        f"{_stopper(r)}), "
        f"{len(exp.epochs)} trial-epochs, {times_text(exp.active_s, exp.span_s)}"
        + (f", {exp.gpu_hours:.2f} GPU-hours ({r.get('gpus_per_trial')} GPU per trial)"
           if exp.gpu_hours else ", CPU only" if not r.get("gpus") else ""),
        f"- **search**: {_search(r, fixed)}, "
        f"max {r.get('max_epochs', fixed.get('max_epochs', '?'))} epochs, "
        f"{r.get('concurrency', '?')} trials at a time",
        f"- **command**: `{r.get('command', 'unknown')}`",
        f"- **git commit**: `{r.get('git_commit', 'unknown')}`",
        f"- **versions**: {r.get('versions', 'unknown')}",
    ]
    if r.get("optuna_storage"):
        lines.append(f"- **Optuna study**: `{r.get('optuna_study')}` in `{r['optuna_storage']}` "
                     f"(`optuna-dashboard {r['optuna_storage']}`)")
    return "\n".join(lines) + "\n"


def leaderboard_table(exp: Experiment, top: int = 10) -> pd.DataFrame:
    board = leaderboard(exp.trials, metric=exp.metric, params=list(exp.space), top=top) if len(exp.trials) else \
        pd.DataFrame()
    row = baseline_row(exp)
    if row is not None:
        # Selection-split columns only: the dev figure belongs to the retrain table.
        extra = pd.DataFrame([{k: v for k, v in row.items() if k in board.columns}])
        board = pd.concat([board, extra], ignore_index=True)
    return board


def retrain_table(exp: Experiment) -> pd.DataFrame | None:
    """mean ± sd over seeds per retrained configuration, and for CoLA the majority class's
    dev accuracy as the last row (a model below it is visible as such)."""
    from results.tables import display

    if exp.retrain is None or exp.retrain.empty:
        return None
    r = exp.retrain.rename(columns={"seeds": "n_seeds"})  # tables from before n_seeds
    table = display(r, [c for c in swept(exp.space) if c in r.columns])
    base = baseline_row(exp)
    if base is not None and base.get("dev_accuracy") is not None and "dev_accuracy" in table:
        row = {c: "" for c in table.columns}
        row.update({"rank": "majority class", "dev_accuracy": f"{base['dev_accuracy']:.4f}",
                    **({"dev_mcc": "0"} if "dev_mcc" in table else {})})
        table = pd.concat([table.astype(object), pd.DataFrame([row])], ignore_index=True)
    return table


def comparison_table(exp: Experiment) -> pd.DataFrame | None:
    """The command's comparison table, each ``<col>_mean`` / ``<col>_sd`` pair as one
    "mean ± sd" column."""
    from results.tables import mean_sd, measured

    c = exp.comparison
    if c is None or c.empty:
        return None
    c = c.rename(columns={"seeds": "n_seeds"})
    pairs = measured(c)
    out = pd.DataFrame(index=c.index)
    for col in c.columns:
        base = re.sub(r"_(mean|sd)$", "", col)
        if base in pairs:
            if col.endswith("_mean"):
                out[base] = [mean_sd(m, s, 4) for m, s in zip(c[f"{base}_mean"], c[f"{base}_sd"])]
        elif col not in out:
            out[col] = c[col]
    return out


def headline(exp: Experiment) -> dict:
    """One row of the side-by-side table."""
    t = exp.trials
    row = {"experiment": exp.name, "study": exp.study, "trials": len(t),
           "stopped early": int((t["status"] == "stopped").sum()) if "status" in t else 0,
           f"best {exp.metric}": (t[exp.metric].iloc[0] if exp.metric in t and len(t) else
                                  float("nan")),
           "trainable params": (int(t["trainable_params"].iloc[0])
                                if "trainable_params" in t and len(t) and
                                not pd.isna(t["trainable_params"].iloc[0]) else None),
           "wall time": _duration(exp.span_s)}
    r = exp.retrain
    if r is not None and not r.empty:
        best = r.sort_values("rank").iloc[0]
        from results.tables import mean_sd, measured

        for col in measured(r)[:4]:
            row[f"retrain {col}"] = mean_sd(best[f"{col}_mean"], best[f"{col}_sd"])
    return row
