"""The sweep machinery every study shares: search space -> Tune domains, the Tuner (the chosen
searcher under a concurrency limit + the chosen scheduler, ``search.algorithms``), resume, and
the console callback; the retrain of the best configurations is ``search.retrain``.

Nothing here knows a particular study: the study comes from ``models.registry``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.registry import Study
from search.disk import SWEEP_CHECKPOINTS
from spaces.dims import Choice, Fixed, LogUniform, Uniform

RETRAIN_DIR = "retrained"  # <exp>/retrained/<config key>-seed<k>/{adapter, metrics.json}
RETRAIN_EXPERIMENT = "retrain"  # the Tune experiment that runs them, <exp>/retrain/
OPTUNA_DB = "optuna.db"  # the searcher's Optuna study, for optuna-dashboard


@dataclass
class SweepPlan:
    study: Study
    storage_path: Path
    name: str
    space: dict  # name -> spaces.dims dimension
    fixed: dict  # config fields that are the same for every trial
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    seed: int
    cpus_per_trial: float
    gpus_per_trial: float
    concurrency: int
    retrain_top_k: int
    retrain_seeds: int
    resume: bool = False
    max_failures: int = 2  # Tune retries of a crashed trial, from its last checkpoint
    # Reusing trial actors saves a worker start per trial on one machine. On a cluster it is
    # off: when a node dies, Tune can hand the recovering trial the dead node's cached actor
    # and count one loss as two failures.
    reuse_actors: bool = True
    # Optuna RDB URL the searcher's study lives in; None: sqlite file in the experiment dir.
    optuna_storage: str | None = None
    optuna_study: str | None = None  # study name there; None: the experiment name
    # Cloud storage (results.storage.Remote) Tune writes to; storage_path is then the driver's
    # local mirror of it.
    remote: object | None = None
    searcher: str = "tpe"  # a name in search.algorithms.SEARCHERS
    scheduler: str = "asha"  # a name in search.algorithms.SCHEDULERS
    # What the searcher and the scheduler rank trials on (a best-so-far result key) and its
    # direction; "" = the study's selection metric. Retrain selection always uses the study's.
    metric: str = ""
    mode: str = ""
    warm_start: list = field(default_factory=list)  # configurations evaluated first
    total_cpus: int = 0  # CPUs for trials; retrains with fewer jobs than slots share them out
    node_cpus: int = 0  # CPUs of the one machine (0: a cluster, where a job stays on one node)
    memory_per_trial: int = 0  # bytes: Ray's ``memory`` resource of a trial (0: not planned)
    memory_note: dict = field(default_factory=dict)  # how it was planned (printed, recorded)
    disk_note: dict = field(default_factory=dict)  # what it writes against what is free (search.disk)
    tracking: object = None  # search.tracking.Tracking: trackers given --log-to (None: none)
    # --objectives: [(result column, "max"/"min")], several at once (Optuna multi-objective);
    # None: the one metric above
    objectives: list | None = None
    # Random trials before TPE, GP and CMA-ES start modelling; None: a third of num_samples
    # (2..10), see search.algorithms.startup_trials.
    startup_trials: int | None = None
    verbose: bool = False  # -v: Ray's status tables too, besides search.progress's lines
    # --pack K: trials train K at a time in the slots of one engine (search.packing); 1: each
    # trial in its own process.
    pack: int = 1
    engine_memory: int = 0  # bytes: the packed engine's memory resource (0: not planned)
    client_memory: int = 0  # bytes: a packed trial's own process's memory resource
    pack_auto: bool = False  # --pack auto: ``pack`` is the most to probe, the plan picks K

    def __post_init__(self):
        self.metric = self.metric or self.study.metric
        self.mode = self.mode or self.study.mode
        self.total_cpus = self.total_cpus or int(self.cpus_per_trial * self.concurrency)

    @property
    def exp_dir(self) -> Path:
        return self.storage_path / self.name

    @property
    def optuna_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.exp_dir.absolute() / OPTUNA_DB}"

    @property
    def optuna_study_name(self) -> str:
        return self.optuna_study or self.name

    @property
    def resources(self) -> dict:
        out = {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}
        if self.memory_per_trial:
            out["memory"] = self.memory_per_trial
        return out


def to_tune(dim):
    from ray import tune

    if isinstance(dim, LogUniform):
        return tune.loguniform(dim.low, dim.high)
    if isinstance(dim, Uniform):
        return tune.uniform(dim.low, dim.high)
    if isinstance(dim, Choice):
        return tune.choice(list(dim.values))
    if isinstance(dim, Fixed):
        return dim.value
    raise TypeError(dim)


def _param_space(plan: SweepPlan) -> dict:
    space = {k: to_tune(v) for k, v in plan.space.items()}
    # "_metric": so that a trial that fails before training can still report the metric (NaN).
    return {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in plan.fixed.items()},
            "_metric": plan.metric, **space}


# A packed trial's own process only waits for its engine (which holds the CPUs, or the GPU):
# the least Ray accepts, so that the concurrency limit, not the CPUs, bounds how many run.
PACKED_TRIAL_CPUS = 0.01


def _wrapped_trainable(plan: SweepPlan, data, provenance: dict, resources: dict | None = None,
                       engine=None):
    from ray import tune

    if engine is not None:  # a thin client of the engine, which has the data already
        from models.packed.trial import packed_trainable_for

        return tune.with_resources(
            tune.with_parameters(packed_trainable_for(plan.study.name), provenance=provenance,
                                 engine=engine.name),
            {"cpu": PACKED_TRIAL_CPUS, **({"memory": plan.client_memory}
                                          if plan.client_memory else {})})
    fn = plan.study.trainable
    return tune.with_resources(tune.with_parameters(fn, data=data, provenance=provenance),
                               resources or plan.resources)


def _reporter(metrics: list[str], params: list[str]):
    from ray import tune

    return tune.CLIReporter(metric_columns=metrics, parameter_columns=params,
                            max_report_frequency=30, sort_by_metric=False,
                            print_intermediate_tables=True)


def _storage(plan: SweepPlan, *parts: str) -> dict:
    """Tune's storage arguments for ``<storage>/<parts>``: the bucket when the plan has one."""
    if plan.remote is not None:
        return {"storage_path": plan.remote.join(*parts), "storage_filesystem": plan.remote.fs}
    return {"storage_path": str(plan.storage_path.joinpath(*parts))}


def _run_config(plan: SweepPlan, name: str, parts: tuple = (), *, keep: int, score: str | None,
                reporter=None, callbacks=None, stop=None, verbose: int = 1):
    from ray import tune

    from search.tracking import callbacks as tracker_callbacks

    label = plan.name if name == plan.name else f"{plan.name}/{name}"
    callbacks = [*(callbacks or []), *tracker_callbacks(plan.tracking, label)] or None
    return tune.RunConfig(
        progress_reporter=reporter,
        name=name, **_storage(plan, *parts),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=score,
                                                checkpoint_score_order=plan.mode),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        callbacks=callbacks, stop=stop,
        verbose=verbose,
    )


def progress(plan: SweepPlan, *, retrain: bool = False):
    """The sweep's console lines (search.progress) for the sweep or its retrain."""
    from search.algorithms import SCHEDULERS
    from search.progress import progress_callback

    if retrain:
        report = plan.study.report_metric
        shown = list(dict.fromkeys([report, report.replace("_mcc", "_accuracy")]))
        return progress_callback(shown=shown, best_key=report, mode=plan.study.mode,
                                 max_epochs=plan.max_epochs, stopper=None, label="retrain job")
    base = [plan.metric.removeprefix("best_"), plan.study.metric.removeprefix("best_")]
    stopper = None if plan.scheduler == "none" else SCHEDULERS[plan.scheduler].label
    return progress_callback(shown=list(dict.fromkeys(base)), best_key=plan.study.metric,
                             mode=plan.study.mode, max_epochs=plan.max_epochs, stopper=stopper)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(plan: SweepPlan, data, provenance: dict, *, stop=None, callbacks=(),
                verbose: int = 1, engine=None):
    """A new Tuner, or the interrupted one restored when ``plan.resume``. ``stop`` (a Tune
    stopper) and ``callbacks`` are for callers that watch or cut a sweep (the benchmarks).
    ``engine``: the packed engine (``search.packing.Engine``), when trials are packed."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.algorithms import build_scheduler, build_searcher
    from search.oom import install

    install()  # a trial killed for memory fails alone (see search/oom.py)
    trainable = _wrapped_trainable(plan, data, provenance, engine=engine)
    if plan.resume:
        # Finished trials are kept; the searcher's state and the scheduler's bookkeeping come
        # back from the experiment checkpoint, so the total stays num_samples.
        where = _storage(plan, plan.name)
        return tune.Tuner.restore(where["storage_path"], trainable=trainable,
                                  storage_filesystem=where.get("storage_filesystem"),
                                  resume_unfinished=True, resume_errored=True)
    if plan.optuna_storage is None:
        plan.exp_dir.mkdir(parents=True, exist_ok=True)  # the sqlite file lives there
    # The Optuna study persists in an RDB (sqlite in the experiment dir by default), so that
    # optuna-dashboard and the report can open it; Tune still drives it.
    searcher = build_searcher(plan, plan.warm_start)
    scheduler = build_scheduler(plan)
    callbacks = list(callbacks)
    if engine is not None:
        from search.packing import EngineWatch

        callbacks.append(EngineWatch(engine))
    if hasattr(scheduler, "load_state"):  # its bookkeeping is saved with the experiment
        from search.resumable_schedulers import SchedulerState

        callbacks.append(SchedulerState(scheduler))
    metrics = list(dict.fromkeys(["epoch", plan.metric, plan.study.metric]))
    run_config = _run_config(plan, plan.name, keep=SWEEP_CHECKPOINTS, score=plan.metric.removeprefix("best_"),
                             reporter=_reporter(metrics, list(plan.space)) if verbose else None,
                             callbacks=callbacks, stop=stop, verbose=verbose)
    return tune.Tuner(
        trainable, param_space=_param_space(plan),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=plan.concurrency),
            scheduler=scheduler, num_samples=plan.num_samples, reuse_actors=plan.reuse_actors,
            trial_dirname_creator=_trial_dirname),
        run_config=run_config,
    )


def trial_statuses(exp_dir, storage_filesystem=None) -> dict[str, str]:
    """Tune's last recorded status per trial of the experiment at ``exp_dir`` (a local path, or
    a path in ``storage_filesystem``)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(exp_dir), storage_filesystem=storage_filesystem)
    return {t.trial_id: t.status for t in analysis.trials}


def sweep_finished(plan: SweepPlan, grid=None) -> tuple[bool, dict[str, str]]:
    """Whether every trial ended, and each trial's status. ``grid``: what ``Tuner.fit``
    returned, whose trials are the driver's own; their statuses are the ones to trust, since
    the last experiment snapshot can still show a trial that HyperBand paused and then
    finished as PAUSED. Without it, the snapshot is read."""
    analysis = getattr(grid, "_experiment_analysis", None)
    if analysis is not None and getattr(analysis, "trials", None):
        statuses = {t.trial_id: t.status for t in analysis.trials}
    else:
        where = _storage(plan, plan.name)
        statuses = trial_statuses(where["storage_path"], where.get("storage_filesystem"))
    done = sum(s in ("TERMINATED", "ERROR") for s in statuses.values())
    return done >= plan.num_samples, statuses
