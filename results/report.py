"""A Markdown report with PNG figures for one or more experiment directories (any study).

    python -m results report ray_results/cola_lora [more dirs ...] [--out DIR] [--strict]

Per experiment: header (study, model, data, budget, command, commit, versions), leaderboard
(with the majority-class baseline for CoLA), learning curves with ASHA's rungs, one panel per
hyperparameter with edge-of-range flags, parallel coordinates of the top trials, fANOVA
importance, the retrain table and the command's comparison table. Several directories also get
a side-by-side table first."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from results.experiment import Experiment, load_experiment
from results.importance import param_importance
from results.advice import edge_advice, importance_evidence
from results.plots import (asha_rungs, hyperparameter_panels, importance_bar,
                           learning_curves, parallel_coordinates)
from results.report_parts import (markdown_table, save_figure, baseline_row, comparison_table, header,
                                  headline, leaderboard_table, retrain_table)
from results.space import swept

SECTIONS = ("Header", "Leaderboard", "Learning curves", "Hyperparameters",
            "Parallel coordinates", "Importance", "Retrain")


def _experiment_section(exp: Experiment, out: Path, prefix: str,
                        show_comparison: bool = True) -> list[str]:
    """One experiment's sections, in SECTIONS' order, then its trade-offs."""
    return (_header_section(exp) + _curves_section(exp, out, prefix)
            + _space_sections(exp, out, prefix) + _retrain_section(exp, out, prefix, show_comparison)
            + tradeoffs_section(exp, out, prefix, show_comparison))


def _header_section(exp: Experiment) -> list[str]:
    parts = [f"## {exp.name}\n", "### Header\n", header(exp)]
    if exp.problems:
        parts.append("\n**Problems found** (the report uses what could be read):\n")
        parts += [f"- {p}" for p in exp.problems]
        parts.append("")
    parts += ["\n### Leaderboard\n",
              f"Top trials by `{exp.metric}` on the selection split"
              + (" and the majority-class baseline (MCC 0)" if baseline_row(exp) else "") + ".\n",
              markdown_table(leaderboard_table(exp))]
    return parts


def _curves_section(exp: Experiment, out: Path, prefix: str) -> list[str]:
    """Learning curves with ASHA's rungs, on the metric and on what the searcher ranked on."""
    rungs = asha_rungs(int(exp.record.get("max_epochs") or (exp.epochs["epoch"].max()
                                                            if "epoch" in exp.epochs else 1)),
                       int(exp.record.get("grace_period") or 1),
                       float(exp.record.get("reduction_factor") or 2)) \
        if exp.record.get("scheduler", "asha") == "asha" else []
    name = save_figure(learning_curves(exp.epochs, exp.trials, metric=exp.metric, rungs=rungs),
                 out / f"{prefix}learning_curves.png")
    parts = ["\n### Learning curves\n", f"![learning curves]({name})\n"]
    ranked_on = exp.record.get("search_metric")
    if ranked_on and ranked_on != exp.metric:  # what the searcher and the scheduler saw
        name = save_figure(learning_curves(exp.epochs, exp.trials, metric=ranked_on, rungs=rungs),
                     out / f"{prefix}learning_curves_{ranked_on}.png")
        parts += [f"The searcher and the scheduler ranked trials on `{ranked_on}`:\n",
                  f"![learning curves, {ranked_on}]({name})\n"]
    return parts


def _space_sections(exp: Experiment, out: Path, prefix: str) -> list[str]:
    """Hyperparameter panels with edge-of-range advice, parallel coordinates, importance."""
    parts = ["\n### Hyperparameters\n"]
    if swept(exp.space) and len(exp.trials):
        name = save_figure(hyperparameter_panels(exp.trials, exp.space, metric=exp.metric,
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
        name = save_figure(parallel_coordinates(exp.trials, exp.space, metric=exp.metric, mode=exp.mode),
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
        name = save_figure(importance_bar(imp, int(exp.trials[exp.metric].notna().sum())),
                     out / f"{prefix}importance.png")
        parts += [f"fANOVA importance over {int(exp.trials[exp.metric].notna().sum())} trials' "
                  f"`{exp.metric}` (trials stopped early count with the value they reached), "
                  "from an Optuna study rebuilt from the results.\n", markdown_table(imp),
                  f"\n![importance]({name})\n"]
    else:
        parts.append("_needs at least 2 swept hyperparameters and 2 trials with different "
                     "values_")
    return parts


def _retrain_section(exp: Experiment, out: Path, prefix: str, show_comparison: bool) -> list[str]:
    """The retrain table and curves, and the command's comparison table and charts."""
    parts = ["\n### Retrain\n"]
    r = exp.record
    if r.get("report_split"):
        parts.append(f"The best configurations retrained on the whole training set, reported on "
                     f"{r['report_split']} (mean ± sd over seeds, "
                     f"{r.get('retrain_weights', 'the last epoch')}); the split never chose "
                     "them.\n")
    rt = retrain_table(exp)
    parts.append(markdown_table(rt) if rt is not None else "_no retrain results_")
    from results.retrain_curves import retrain_curves, retrain_epochs

    curves = retrain_epochs(exp.path)
    if not curves.empty:
        name = save_figure(retrain_curves(curves), out / f"{prefix}retrain_curves.png")
        parts.append(f"\n![retrain curves]({name})\n")
    comp = comparison_table(exp) if show_comparison else None
    if comp is not None:
        from results.comparison import comparison_charts

        label = "method" if "method" in comp else "model"
        n = exp.comparison.get("rouge_articles")
        about = f", {int(n.iloc[0])} articles" if n is not None and n.notna().any() else ""
        charts = comparison_charts(exp.comparison.rename(columns={"seeds": "n_seeds"}), out,
                                   label=label, prefix=f"{prefix}comparison_", about=about)
        parts += [f"\n### Comparison (`{exp.comparison_path}`)\n", markdown_table(comp)]
        parts += [f"\n![{c}]({c})\n" for c in charts]
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
        name = save_figure(pareto_figure(t, x="trainable_params", y=exp.metric, modes=modes,
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
                name = save_figure(pareto_figure(d, x=x, y=y, modes=_MODES, label=label,
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
        parts += ["## Side by side\n", markdown_table(pd.DataFrame([headline(e) for e in exps]))]
    seen = set()
    for i, exp in enumerate(exps):
        prefix = f"{i + 1}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', exp.name)}_"
        parts += _experiment_section(exp, out, prefix,
                                     show_comparison=exp.comparison_path not in seen)
        seen.add(exp.comparison_path)
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path, [p for e in exps for p in e.problems]
