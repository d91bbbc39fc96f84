"""A Markdown report with PNG figures for one or more experiment directories (any study).

    python -m results report ray_results/cola_lora [more dirs ...] [--out DIR] [--strict]

Per experiment: header (study, model, data, budget, command, commit, versions), leaderboard
(with the majority-class baseline for CoLA), learning curves with ASHA's rungs, one panel per
hyperparameter with edge-of-range flags, parallel coordinates of the top trials, fANOVA
importance, the retrain table and the command's comparison table. Several directories also get
a side-by-side table first."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from models.console import clock
from results.experiment import Experiment, load_experiment
from results.frames import leaderboard
from results.importance import param_importance
from results.advice import edge_advice, importance_evidence
from results.plots import (asha_rungs, hyperparameter_panels, importance_bar,
                           learning_curves, parallel_coordinates)
from results.space import swept

# GLUE CoLA dev: 68.9 % label 1 (used when an experiment did not record its own baseline).
COLA_DEV_MAJORITY = 0.689
SECTIONS = ("Header", "Leaderboard", "Learning curves", "Hyperparameters",
            "Parallel coordinates", "Importance", "Retrain")


def _md(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
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


def _save(fig, path: Path) -> str:
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


def _experiment_section(exp: Experiment, out: Path, prefix: str,
                        show_comparison: bool = True) -> list[str]:
    parts = [f"## {exp.name}\n", "### Header\n", header(exp)]
    if exp.problems:
        parts.append("\n**Problems found** (the report uses what could be read):\n")
        parts += [f"- {p}" for p in exp.problems]
        parts.append("")
    parts += ["\n### Leaderboard\n",
              f"Top trials by `{exp.metric}` on the selection split"
              + (" and the majority-class baseline (MCC 0)" if baseline_row(exp) else "") + ".\n",
              _md(leaderboard_table(exp))]

    rungs = asha_rungs(int(exp.record.get("max_epochs") or (exp.epochs["epoch"].max()
                                                            if "epoch" in exp.epochs else 1)),
                       int(exp.record.get("grace_period") or 1),
                       float(exp.record.get("reduction_factor") or 2)) \
        if exp.record.get("scheduler", "asha") == "asha" else []
    name = _save(learning_curves(exp.epochs, exp.trials, metric=exp.metric, rungs=rungs),
                 out / f"{prefix}learning_curves.png")
    parts += ["\n### Learning curves\n", f"![learning curves]({name})\n"]
    ranked_on = exp.record.get("search_metric")
    if ranked_on and ranked_on != exp.metric:  # what the searcher and the scheduler saw
        name = _save(learning_curves(exp.epochs, exp.trials, metric=ranked_on, rungs=rungs),
                     out / f"{prefix}learning_curves_{ranked_on}.png")
        parts += [f"The searcher and the scheduler ranked trials on `{ranked_on}`:\n",
                  f"![learning curves, {ranked_on}]({name})\n"]

    parts.append("\n### Hyperparameters\n")
    if swept(exp.space) and len(exp.trials):
        name = _save(hyperparameter_panels(exp.trials, exp.space, metric=exp.metric,
                                           mode=exp.mode), out / f"{prefix}hyperparameters.png")
        parts.append(f"![hyperparameters]({name})\n")
        flags, note = edge_advice(exp.trials, exp.space, metric=exp.metric, mode=exp.mode)
        parts.append(note)
        for hp, edge in flags.items():
            parts.append(f"- **{hp}**: the best trial sits at the {edge} edge of "
                         f"{exp.space[hp].describe()}; widen the space there.")
    else:
        parts.append("_search space unknown or no trials_")

    parts.append("\n### Parallel coordinates\n")
    if swept(exp.space) and len(exp.trials):
        name = _save(parallel_coordinates(exp.trials, exp.space, metric=exp.metric, mode=exp.mode),
                     out / f"{prefix}parallel_coordinates.png")
        parts.append(f"![parallel coordinates]({name})\n")
    else:
        parts.append("_search space unknown or no trials_")

    parts.append("\n### Importance\n")
    too_few = importance_evidence(exp.trials, exp.metric)
    imp = param_importance(exp.trials, exp.space, metric=exp.metric, mode=exp.mode) \
        if len(exp.trials) and too_few is None else pd.DataFrame()
    if too_few:
        parts.append(too_few)
    elif len(imp):
        name = _save(importance_bar(imp, int(exp.trials[exp.metric].notna().sum())),
                     out / f"{prefix}importance.png")
        parts += [f"fANOVA importance over {int(exp.trials[exp.metric].notna().sum())} trials' "
                  f"`{exp.metric}` (trials stopped early count with the value they reached), "
                  "from an Optuna study rebuilt from the results.\n", _md(imp),
                  f"\n![importance]({name})\n"]
    else:
        parts.append("_needs at least 2 swept hyperparameters and 2 trials with different "
                     "values_")

    parts.append("\n### Retrain\n")
    r = exp.record
    if r.get("report_split"):
        parts.append(f"The best configurations retrained on the whole training set, reported on "
                     f"{r['report_split']} (mean ± sd over seeds, "
                     f"{r.get('retrain_weights', 'the last epoch')}); the split never chose "
                     "them.\n")
    rt = retrain_table(exp)
    parts.append(_md(rt) if rt is not None else "_no retrain results_")
    from results.retrain_curves import retrain_curves, retrain_epochs

    curves = retrain_epochs(exp.path)
    if not curves.empty:
        name = _save(retrain_curves(curves), out / f"{prefix}retrain_curves.png")
        parts.append(f"\n![retrain curves]({name})\n")
    comp = comparison_table(exp) if show_comparison else None
    if comp is not None:
        from results.comparison import comparison_charts

        label = "method" if "method" in comp else "model"
        n = exp.comparison.get("rouge_articles")
        about = f", {int(n.iloc[0])} articles" if n is not None and n.notna().any() else ""
        charts = comparison_charts(exp.comparison.rename(columns={"seeds": "n_seeds"}), out,
                                   label=label, prefix=f"{prefix}comparison_", about=about)
        parts += [f"\n### Comparison (`{exp.comparison_path}`)\n", _md(comp)]
        parts += [f"\n![{c}]({c})\n" for c in charts]
    parts += tradeoffs_section(exp, out, prefix, show_comparison)
    return parts


# (x, y, label column, x on a log scale) of the comparison tables' trade-offs; modes below.
_COMPARISON_TRADEOFFS = (("trainable_params_mean", "test_rougeL_mean", "method", True),
                         ("mean_train_s_mean", "test_rougeL_mean", "method", False),
                         ("cpu_sentences_per_s", "dev_mcc_mean", "model", True))
_MODES = {"trainable_params": "min", "trainable_params_mean": "min", "mean_train_s_mean": "min",
          "test_rougeL_mean": "max", "cpu_sentences_per_s": "max", "dev_mcc_mean": "max"}


def tradeoffs_section(exp: Experiment, out: Path, prefix: str, show_comparison: bool) -> list[str]:
    """Pareto views: the swept metric against trainable parameters over the trials, and the
    command's comparison (summarization: ROUGE-L against parameters and seconds per epoch;
    distillation: dev MCC against CPU throughput), non-dominated points marked."""
    from results.pareto import non_dominated, pareto_figure

    parts = ["\n### Trade-offs (Pareto)\n"]
    t = exp.trials
    if len(t) and "trainable_params" in t and exp.metric in t and t["trainable_params"].nunique() > 1:
        modes = {"trainable_params": "min", exp.metric: exp.mode}
        name = _save(pareto_figure(t, x="trainable_params", y=exp.metric, modes=modes,
                                   label=None, title=f"trials: {exp.metric} vs trainable params",
                                   xlog=True), out / f"{prefix}pareto_trials.png")
        front = t[non_dominated(t, modes)]
        parts += [f"![pareto, trials]({name})\n",
                  f"Non-dominated trials ({len(front)} of {int(t[exp.metric].notna().sum())}): "
                  + ", ".join(f"`{r.trial_id}` ({exp.metric} {getattr(r, exp.metric):.4g}, "
                              f"{int(r.trainable_params):,} params)"
                              for r in front.itertuples()) + "\n"]
    else:
        parts.append("_trials: one trainable-parameter count for all, no trade-off to show_\n")
    c = exp.comparison if show_comparison else None
    if c is not None and not c.empty:
        for x, y, label, xlog in _COMPARISON_TRADEOFFS:
            if x in c and y in c and c[[x, y]].notna().all(axis=1).sum() >= 2:
                d = c.copy()
                d[x], d[y] = pd.to_numeric(d[x], errors="coerce"), pd.to_numeric(d[y], errors="coerce")
                name = _save(pareto_figure(d, x=x, y=y, modes=_MODES, label=label,
                                           title=f"comparison: {y} vs {x}", xlog=xlog),
                             out / f"{prefix}pareto_{y}_{x}.png")
                front = d[non_dominated(d, {x: _MODES[x], y: _MODES[y]})][label]
                parts += [f"![pareto {y} vs {x}]({name})\n",
                          f"Non-dominated ({y} vs {x}): {', '.join(map(str, front))}\n"]
    return parts


def build_report(dirs: list[str | Path], out: str | Path) -> tuple[Path, list[str]]:
    """Write ``out/report.md`` and its PNGs. Returns (report path, problems found)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exps = [load_experiment(d) for d in dirs]
    parts = ["# Sweep report\n",
             "Experiments: " + ", ".join(f"`{e.path}`" for e in exps) + "\n"]
    if len(exps) > 1:
        parts += ["## Side by side\n", _md(pd.DataFrame([headline(e) for e in exps]))]
    seen = set()
    for i, exp in enumerate(exps):
        prefix = f"{i + 1}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', exp.name)}_"
        parts += _experiment_section(exp, out, prefix,
                                     show_comparison=exp.comparison_path not in seen)
        seen.add(exp.comparison_path)
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path, [p for e in exps for p in e.problems]
