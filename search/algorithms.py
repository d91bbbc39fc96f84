"""Searchers and schedulers by name: what ``--searcher`` and ``--scheduler`` build.

Each name maps to one builder; the Tuner code (``search.sweep``) asks this module and nothing
else. Optuna's samplers run through ``search.optuna_search`` (Optuna told PRUNED for a trial
the scheduler stopped); ASHA, HyperBand and the median rule are ``search.resumable_schedulers``
(their bookkeeping survives ``--resume``).
Ray is imported only inside the builders, when a sweep runs."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from models.errors import InputError

DEFAULT_SEARCHER = "tpe"
DEFAULT_SCHEDULER = "asha"


@dataclass(frozen=True)
class Algorithm:
    label: str  # how the plan, experiment.json and the report name it
    build: Callable  # searchers: (plan, points) -> Searcher; schedulers: (plan) -> TrialScheduler
    needs: tuple = ()  # modules it imports, and the extra that installs them
    extra: str | None = None


def startup_trials(plan) -> int:
    """Random trials before a model-based sampler starts modelling (--startup-trials)."""
    if getattr(plan, "startup_trials", None) is not None:
        return plan.startup_trials
    # Optuna's default of 10 random start-up trials would leave small sweeps entirely random;
    # a third of the budget (2..10) is random, the rest is modelled.
    return max(2, min(10, plan.num_samples // 3))



def _tpe(plan):
    import optuna

    # constant_liar: trials running side by side are treated as bad until they report, so
    # parallel suggestions spread out instead of repeating the same point.
    return optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=startup_trials(plan),
                                      constant_liar=plan.concurrency > 1)


def _gp(plan):
    import optuna

    return optuna.samplers.GPSampler(seed=plan.seed, n_startup_trials=startup_trials(plan))


def _random(plan):
    import optuna

    return optuna.samplers.RandomSampler(seed=plan.seed)


def _qmc(plan):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=plan.seed,
                                          warn_independent_sampling=False)


def _cmaes(plan):
    import optuna

    # CMA-ES models the numeric dimensions; categorical ones are drawn at random.
    return optuna.samplers.CmaEsSampler(seed=plan.seed, n_startup_trials=startup_trials(plan),
                                        warn_independent_sampling=False)


def _optuna(sampler_fn):
    def build(plan, points):
        from search.optuna_search import PrunedAwareOptunaSearch, SafeRDBStorage

        objectives = getattr(plan, "objectives", None)
        metric, mode = ([n for n, _ in objectives], [m for _, m in objectives]) if objectives \
            else (plan.metric, plan.mode)
        return PrunedAwareOptunaSearch(
            metric=metric, mode=mode, sampler=sampler_fn(plan),
            storage=SafeRDBStorage(plan.optuna_url),
            study_name=plan.optuna_study_name, points_to_evaluate=points or None)

    return build


def _bohb(plan, points):
    from ray.tune.search.bohb import TuneBOHB

    return TuneBOHB(metric=plan.metric, mode=plan.mode, seed=plan.seed,
                    points_to_evaluate=points or None)


SEARCHERS: dict[str, Algorithm] = {
    "tpe": Algorithm("Optuna TPE", _optuna(_tpe)),
    "gp": Algorithm("Optuna GP (Gaussian process)", _optuna(_gp), needs=("scipy",)),
    "random": Algorithm("random search (Optuna RandomSampler)", _optuna(_random)),
    "qmc": Algorithm("quasi-random Sobol (Optuna QMCSampler)", _optuna(_qmc), needs=("scipy",)),
    "cmaes": Algorithm("Optuna CMA-ES", _optuna(_cmaes), needs=("cmaes",)),
    "bohb": Algorithm("BOHB (Tune's TuneBOHB)", _bohb, needs=("hpbandster", "ConfigSpace"),
                      extra="bohb"),
}

# Searchers whose state is an Optuna study (in optuna.db or --optuna-storage).
OPTUNA_BACKED = frozenset(n for n in SEARCHERS if n != "bohb")
# Optuna samplers that model several objectives at once (--objectives).
MULTI_OBJECTIVE = frozenset({"tpe", "random", "qmc"})


def _asha(plan):
    from search.resumable_schedulers import ResumableASHA

    return ResumableASHA(time_attr="epoch", metric=plan.metric, mode=plan.mode,
                         max_t=plan.max_epochs, grace_period=plan.grace_period,
                         reduction_factor=plan.reduction_factor)


def _hyperband(plan):
    from search.resumable_schedulers import ResumableHyperBand, ResumableHyperBandForBOHB

    cls = ResumableHyperBandForBOHB if plan.searcher == "bohb" else ResumableHyperBand
    return cls(time_attr="epoch", metric=plan.metric, mode=plan.mode, max_t=plan.max_epochs,
               reduction_factor=plan.reduction_factor)


def _median(plan):
    from search.resumable_schedulers import ResumableMedian

    return ResumableMedian(time_attr="epoch", metric=plan.metric, mode=plan.mode,
                           grace_period=plan.grace_period, min_samples_required=3)


def _fifo(plan):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULERS: dict[str, Algorithm] = {
    "asha": Algorithm("ASHA", _asha),
    "hyperband": Algorithm("HyperBand", _hyperband),
    "median": Algorithm("the median stopping rule", _median),
    "none": Algorithm("no scheduler (every trial runs to the end)", _fifo),
}


def resolve(searcher: str | None, scheduler: str | None) -> tuple[str, str]:
    """The flags' pair, checked before anything starts. BOHB is TuneBOHB with its own
    HyperBandForBOHB: without it, it is not BOHB."""
    searcher = searcher or DEFAULT_SEARCHER
    if scheduler is None:
        scheduler = "hyperband" if searcher == "bohb" else DEFAULT_SCHEDULER
    if searcher == "bohb" and scheduler != "hyperband":
        raise InputError(f"--searcher bohb with --scheduler {scheduler}: BOHB runs with its own "
                         "HyperBand (--scheduler hyperband, the default with bohb)")
    for name, table in ((searcher, SEARCHERS), (scheduler, SCHEDULERS)):
        algo = table[name]
        missing = [m for m in algo.needs if not _importable(m)]
        if missing:
            flag = "--searcher" if table is SEARCHERS else "--scheduler"
            how = (f"pip install -e '.[{algo.extra}]'" if algo.extra
                   else f"pip install {' '.join(missing)}")
            raise InputError(f"{flag} {name}: needs {', '.join(missing)}, not installed; {how}")
    return searcher, scheduler


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def build_searcher(plan, points: list[dict] | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning for some samplers
        return SEARCHERS[plan.searcher].build(plan, points)


def build_scheduler(plan):
    return SCHEDULERS[plan.scheduler].build(plan)


def describe(plan) -> str:
    """One line for the plan and the report header."""
    sched = SCHEDULERS[plan.scheduler].label
    if plan.scheduler in ("asha", "median"):
        sched += f" (grace {plan.grace_period}"
        sched += f", reduction {plan.reduction_factor:g})" if plan.scheduler == "asha" else ")"
    elif plan.scheduler == "hyperband":
        sched += f" (reduction {plan.reduction_factor:g})"
    objectives = getattr(plan, "objectives", None)
    if objectives:
        return (f"{SEARCHERS[plan.searcher].label} (seed {plan.seed}{_startup_note(plan)}, "
                f"multi-objective) + {sched}, "
                "searching " + ", ".join(f"{k} ({m})" for k, m in objectives))
    return (f"{SEARCHERS[plan.searcher].label} (seed {plan.seed}{_startup_note(plan)}) + {sched}, "
            "ranking trials on "
            f"{plan.metric} ({plan.mode})")


def _startup_note(plan) -> str:
    return (f", {startup_trials(plan)} random start-up trials"
            if plan.searcher in ("tpe", "gp", "cmaes") else "")
