"""Hyperparameter importance from finished trials: an Optuna study is rebuilt in memory from
the trial table (no Ray, no original storage needed) and scored by Optuna's fANOVA evaluator."""
from __future__ import annotations

import math

import pandas as pd

from results.space import swept
from spaces.dims import Choice, LogUniform, Uniform


def _distributions(space: dict) -> dict:
    import optuna

    out = {}
    for name, dim in swept(space).items():
        if isinstance(dim, (LogUniform, Uniform)):
            out[name] = optuna.distributions.FloatDistribution(
                dim.low, dim.high, log=isinstance(dim, LogUniform))
        elif isinstance(dim, Choice):
            out[name] = optuna.distributions.CategoricalDistribution(list(dim.values))
    return out


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def rebuild_study(trials: pd.DataFrame, space: dict, *, metric: str, mode: str):
    """An in-memory Optuna study with one COMPLETE trial per trial row that has a value."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = _distributions(space)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in trials.iterrows():
        value = row.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        params = {}
        for name, dist in dists.items():
            v = _plain(row.get(name))
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                # CSV round trips turn 8 into 8.0: match the declared choice.
                v = next((c for c in dist.choices if c == v), None)
                if v is None:
                    break
            elif v is None or not (dist.low <= float(v) <= dist.high):
                break
            params[name] = v
        else:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                      value=float(value)))
    return study


def param_importance(trials: pd.DataFrame, space: dict, *, metric: str, mode: str,
                     seed: int = 0) -> pd.DataFrame:
    """-> DataFrame(param, importance) sorted, importances summing to 1. Needs >= 2 swept
    dimensions and >= 2 trials with different values (when every trial scored the same,
    e.g. MCC 0 everywhere, no hyperparameter explains anything); otherwise an empty frame."""
    import optuna

    study = rebuild_study(trials, space, metric=metric, mode=mode)
    if len(_distributions(space)) < 2 or len({t.value for t in study.trials}) < 2:
        return pd.DataFrame(columns=["param", "importance"])
    scores = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    return pd.DataFrame({"param": list(scores), "importance": list(scores.values())})
