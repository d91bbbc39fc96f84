"""The command line every study shares: flags, validation before anything starts, the plan,
then sweep -> result tables -> retrain. A study's script supplies only its own flags and how
to load its data and model (see ``search/cola_lora.py``).

Bad input exits 2 before Ray starts and before anything is written."""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from models.errors import ConfigError, InputError
from results.storage import (default_mirror, display, is_uri, open_remote, pull_own_files,
                             pull_tune_files, push_own_files)
from search.checks import (_check_same_search, _check_same_study, _database_error, _masked,  # noqa: F401
                           check_batch_fits, check_optuna_storage, parse_objectives)
from search.redact import ENV_OPTUNA_STORAGE, redact_argv, refuse_credentials_in_uri
from search.tracking import parse as tracking_parse
from search.algorithms import (DEFAULT_SEARCHER, OPTUNA_BACKED, SCHEDULERS, SEARCHERS, describe,
                               resolve, startup_trials)
from search.warm_start import check_study, warm_start_points
from spaces.dims import Choice, Fixed, LogUniform, Uniform

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- argument types: each names its flag in argparse's own exit-2 error ----------------------
def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v} is not allowed: must be >= {minimum}")
        return v

    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"{v} is not allowed: must be > 0")
    return v


def fraction(text: str) -> float:
    v = positive_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: must be in (0, 1)")
    return v


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those flags say in words what happens without them)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=_HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show Ray's status tables and warnings (default: the sweep's own "
                        "progress lines only)")
    g = p.add_argument_group("resources")
    g.add_argument("--gpus", type=nonneg_int, default=None,
                   help="GPUs to use in total (default: all present; 0 runs on CPU)")
    g.add_argument("--gpus-per-trial", type=positive_float, default=1.0,
                   help="GPUs per trial when GPUs are used; fractions share a GPU")
    g.add_argument("--cpus-per-trial", type=positive_int, default=1,
                   help="CPUs (and torch threads) per trial")
    g.add_argument("--address", default=None,
                   help="connect to a running Ray cluster (auto, or HOST:PORT) instead of "
                        "starting one on this machine; --gpus then counts the cluster's GPUs")
    g.add_argument("--memory-per-trial", type=positive_float, default=None, metavar="GIB",
                   help="memory one trial may use, in GiB; trials run at once only as many as "
                        "fit (default: estimated from the model and the largest batch)")
    g.add_argument("--storage-is-shared", action="store_true",
                   help="on a multi-node cluster, declare that --storage-path is a shared file "
                        "system mounted at the same path on every node")
    g = p.add_argument_group("search")
    g.add_argument("--num-samples", type=positive_int, default=None, help="trials")
    g.add_argument("--max-epochs", type=positive_int, default=None, help="epochs per trial")
    g.add_argument("--searcher", choices=sorted(SEARCHERS), default=None,
                   help=f"what proposes configurations (default {DEFAULT_SEARCHER}): "
                        + "; ".join(f"{k}: {a.label}" for k, a in SEARCHERS.items()))
    g.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None,
                   help="what stops weak trials early (default asha; hyperband with --searcher "
                        "bohb, which needs it): " + "; ".join(
                            f"{k}: {a.label}" for k, a in SCHEDULERS.items()))
    g.add_argument("--metric", default=None,
                   help="what the searcher and the scheduler rank trials on (best so far on the "
                        "selection split); CoLA: auc (default), soft_mcc, mcc or loss; "
                        "summarization: loss. Retrain selection and reported figures stay MCC "
                        "and accuracy (summarization: loss)")
    g.add_argument("--objectives", default=None, metavar="NAME:MODE,NAME:MODE",
                   help="search several objectives at once with Optuna's multi-objective "
                        "sampling (needs --scheduler none), e.g. auc:max,trainable_params:min; "
                        "names: the study's --metric choices and trainable_params")
    g.add_argument("--startup-trials", type=nonneg_int, default=None, metavar="N",
                   help="tpe, gp and cmaes: random trials before the sampler models the results "
                        "(default: a third of --num-samples, 2 to 10)")
    g.add_argument("--grace-period", type=positive_int, default=1,
                   help="ASHA and the median rule: epochs before a trial may be stopped")
    g.add_argument("--reduction-factor", type=positive_float, default=2.0,
                   help="ASHA and HyperBand: keep the top 1/factor at each rung (> 1)")
    g.add_argument("--warm-start", default=None, metavar="EXPERIMENT_DIR",
                   help="evaluate the best configurations of an earlier experiment of the same "
                        "study first (they must lie inside the current space)")
    g.add_argument("--warm-start-top", type=positive_int, default=3, metavar="K",
                   help="with --warm-start: how many of its best configurations")
    g.add_argument("--seed", type=int, default=0, help="seed of the searcher, the split and the trials")
    g.add_argument("--space", action="append", default=[], metavar="NAME=SPEC",
                   help="override one search dimension: lo:hi (a range, same scale), "
                        "a,b,c (a choice) or a single value (fixed); repeatable")
    g.add_argument("--max-train-samples", type=positive_int, default=None,
                   help="use a seeded subset of the training set (quick runs)")
    g = p.add_argument_group("speed")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile each trial's model: faster steps after a compile of tens "
                        "of seconds per trial (worth it for long trials; measure with "
                        "bench/train_throughput.py --compile)")
    g.add_argument("--no-length-grouping", action="store_true",
                   help="plain shuffled batches instead of length-grouped ones (more padding)")
    g = p.add_argument_group("retrain")
    g.add_argument("--retrain-top-k", type=nonneg_int, default=None,
                   help="retrain the best k configurations (0 skips)")
    g.add_argument("--retrain-seeds", type=positive_int, default=None, help="seeds per retrain")
    g = p.add_argument_group("experiment tracking (Tune's logger callbacks: a run per trial)")
    g.add_argument("--log-to", type=tracking_parse, default=(), metavar="TRACKERS",
                   help="comma-separated subset of tensorboard, mlflow, wandb")
    g.add_argument("--mlflow-tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking server or store (default $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<storage-path>/mlflow.db)")
    g.add_argument("--wandb-project", default=None,
                   help="W&B project (default $WANDB_PROJECT, else peft-sweeps); "
                        "WANDB_MODE=offline keeps runs on disk")
    g = p.add_argument_group("experiment")
    g.add_argument("--name", default=None, help="experiment name (default: the study's name)")
    g.add_argument("--storage-path", default=None,
                   help="where experiments are written: a directory, or cloud storage "
                        "(s3://bucket/path, gs://bucket/path) that every node of a cluster reaches "
                        "(default ray_results; ray_results/smoke with --smoke-test, so that a "
                        "smoke test and the real sweep never share an experiment)")
    g.add_argument("--local-mirror", default=None, metavar="DIR",
                   help="with cloud --storage-path: this machine's copy of the tables, "
                        "experiment.json, optuna.db and retrained models before they are pushed "
                        "(default: ~/.cache/sweeps-mirror/<scheme>/<bucket>/<path>)")
    g.add_argument("--max-failures", type=nonneg_int, default=2,
                   help="retries of a failed trial, each from its last checkpoint (a lost node, "
                        "a crash); bad configs and missing files fail once")
    g.add_argument("--optuna-storage", default=os.environ.get(ENV_OPTUNA_STORAGE), metavar="URL",
                   help="Optuna RDB URL for the searcher's study (e.g. postgresql://user:pw@host/db "
                        f"for a team database; or set ${ENV_OPTUNA_STORAGE}, which keeps the "
                        "password out of shell history; it is never recorded); default: sqlite "
                        "file optuna.db in the experiment directory")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep (finished trials and retrains are kept)")
    g.add_argument("--smoke-test", action="store_true",
                   help="tiny model built in-process, a handful of trials, CPU, no network")
    set_study_defaults(p, {}, {})
    return p


SMOKE_TRAIN_SLICE = 800  # --smoke-test with --data-dir trains on a stratified slice of CoLA


def add_cola_arguments(group) -> None:
    """The CoLA data flags both CoLA studies take."""
    group.add_argument("--data-dir", default=None,
                       help="CoLA directory (NYU raw/*.tsv or GLUE train.tsv/dev.tsv); "
                            "default: the hub's GLUE CoLA (a generated set with --smoke-test)")
    group.add_argument("--max-length", type=positive_int, default=128, help="tokens per sentence")
    group.add_argument("--selection-fraction", type=fraction, default=0.1,
                       help="share of the training set held out (stratified) to score trials")


def load_cola_splits(args):
    """CoLA from --data-dir, else the hub (a generated set for --smoke-test). A smoke test on
    real data trains on a slice, unless --max-train-samples says otherwise."""
    from models.cola_data import load_cola_dir, load_cola_hub, synthetic_cola

    if args.smoke_test and args.data_dir and args.max_train_samples is None:
        args.max_train_samples = SMOKE_TRAIN_SLICE
    if args.data_dir:
        return load_cola_dir(args.data_dir)
    return synthetic_cola() if args.smoke_test else load_cola_hub()


# Defaults that differ between a real sweep and a smoke test (flags given explicitly win).
DEFAULTS = {"num_samples": 20, "max_epochs": 3, "retrain_top_k": 3, "retrain_seeds": 3}
SMOKE_DEFAULTS = {"num_samples": 6, "max_epochs": 3, "retrain_top_k": 2, "retrain_seeds": 2}


def set_study_defaults(parser: argparse.ArgumentParser, defaults: dict, smoke: dict) -> None:
    """A study's own defaults for the flags above (flags given explicitly still win); --help
    shows both."""
    defaults, smoke = {**DEFAULTS, **defaults}, {**SMOKE_DEFAULTS, **smoke}
    parser.set_defaults(_defaults=defaults, _smoke_defaults=smoke)
    for action in parser._actions:
        if action.dest in defaults:
            action.help = (action.help or "").split(" (default")[0] + \
                f" (default {defaults[action.dest]}; {smoke[action.dest]} with --smoke-test)"


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _value(item: str, name: str, text: str, like):
    """One value of ``--space NAME=...``, of the kind the study's dimension holds (``like``:
    one of its default values): numbers stay numbers, true/false become booleans."""
    if isinstance(like, bool):
        low = text.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        raise InputError(f"--space {item!r}: {name} takes true or false, not {text!r}")
    value = _number(text.strip())
    if isinstance(like, (int, float)) and not isinstance(value, (int, float)):
        raise InputError(f"--space {item!r}: {name} takes numbers, not {text!r}; expected "
                         f"{name}=LOW:HIGH (a range), {name}=A,B,C (choices) or {name}=VALUE")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"--space {item!r}: {name} {text!r} is not a finite number")
    return value


def apply_space_overrides(space: dict, overrides: list[str], allowed: set[str],
                          skip: set[str] = frozenset()) -> dict:
    """``--space`` items on top of ``space``; only the study's search dimensions (``allowed``)
    may be overridden: other config fields (the stage, the model, seeds, threads) are the
    command's, set by its flags. Names in ``skip`` belong to another sweep of the same command
    (another method) and are left out here."""
    space = dict(space)
    for item in overrides:
        name, sep, spec = item.partition("=")
        if not sep or not spec:
            raise InputError(f"--space {item!r}: expected NAME=SPEC, e.g. learning_rate=1e-5:3e-3")
        if name in skip and name not in allowed:
            continue
        if name not in allowed:
            raise InputError(f"--space {item!r}: {name!r} is not a search dimension of this study; "
                             f"allowed: {', '.join(sorted(allowed))} (other settings have flags: "
                             "--help)")
        like = space[name].edges()[0]
        if ":" in spec:
            lo, _, hi = spec.partition(":")
            lo, hi = _value(item, name, lo, 0.0), _value(item, name, hi, 0.0)
            if not lo < hi:
                raise InputError(f"--space {item!r}: lower bound {lo} must be below upper bound {hi}")
            kind = LogUniform if isinstance(space.get(name), LogUniform) else Uniform
            if kind is LogUniform and lo <= 0:
                raise InputError(f"--space {item!r}: {name} lower bound {lo} is not allowed: "
                                 "a log-uniform range needs bounds > 0")
            space[name] = kind(float(lo), float(hi))
        elif "," in spec:
            space[name] = Choice(tuple(_value(item, name, v, like) for v in spec.split(",")))
        else:
            space[name] = Fixed(_value(item, name, spec, like))
    return space


def validate_space(space: dict, config_cls, fixed: dict) -> None:
    """Every extreme value of every dimension must make a valid config (the config's
    ``__post_init__`` is the one source of truth for what is allowed)."""
    for name, dim in space.items():
        for edge in dim.edges():
            try:
                config_cls(**{**fixed, name: edge})
            except ConfigError as e:
                raise InputError(f"search space {name} = {dim.describe()}: {e}") from None
            except TypeError as e:
                raise InputError(f"search space {name}: {e}") from None


def check_storage(path: str) -> Path:
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"--storage-path {path!r}: not writable ({probe} is not a directory)")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise InputError(f"--storage-path {path!r}: not writable ({probe}: {e.strerror})") from None
    return p


def check_gpus(asked: int | None) -> tuple[int, int]:
    import torch

    found = torch.cuda.device_count()
    if asked is None:
        return found, found
    if asked > found:
        raise InputError(f"--gpus {asked}: asked for {asked} GPUs, found {found}")
    return asked, found


@dataclass(frozen=True)
class Variant:
    """One sweep of a command: which study, and search-space overrides on top of its space
    (e.g. the distillation study with kd_fraction fixed at 1 is its scratch baseline)."""

    study: str
    overrides: dict


@dataclass
class Prepared:
    """What a study's ``prepare`` returns: the data for every trial and the fixed config."""

    data: object
    fixed: dict  # config fields shared by all trials (model path, targets, ...)
    describe: dict  # for the plan and experiment.json
    finalize: Callable[[Path], None] | None = None  # copies smoke-test artefacts into exp dir
    after: Callable[[list], None] | None = None  # given [(plan, retrain summary)] at the end
    extra: dict = field(default_factory=dict)  # recorded in experiment.json only
    # (study name, space, fixed) -> a trial's peak memory (search.memory.Estimate); None: not
    # estimated
    memory: Callable[[str, dict, dict], object] | None = None
    train_rows: int | None = None  # rows a sweep trial trains on: the largest sensible batch
    report_split: str | None = None  # where retrains are reported, when not the study's usual


# Set by quiet_libraries(); workers on other nodes get them through the runtime env.
QUIET_ENV = ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "TOKENIZERS_PARALLELISM",
             "PYTHONWARNINGS")


def quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Tune's classic reporter: one compact status table every 30 s with our columns
    # (the newer output prints a box per result, which buries progress in long sweeps).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    # Every epoch checkpoints, so Tune snapshots its state often; that is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Workers import this project even when it is not pip-installed.
    parts = [str(REPO_ROOT)] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))


def quiet_ray(verbose: bool) -> None:
    """Without -v, Ray and Optuna say only what goes wrong: the sweep prints its own progress
    (search.progress). Tune's interrupt hint (Tuner.restore) is among what is hidden: the
    sweep's own says --resume."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    os.environ["PEFT_SWEEPS_RAY_LOG_LEVEL"] = "WARNING" if verbose else "ERROR"


def run(study_name: str, argv: list[str] | None, parser: argparse.ArgumentParser,
        prepare: Callable[[argparse.Namespace, Path, Path], Prepared],
        variants: Callable[[argparse.Namespace], dict[str, Variant]] | None = None) -> int:
    """Parse, validate, plan, sweep, retrain. Returns the exit code.

    ``variants(args)`` -> {experiment-name suffix: Variant}: one sweep each, with the same
    budget (e.g. distillation and its from-scratch baseline, or one sweep per summarization
    method). Default: one sweep of ``study_name``; ``study_name`` also names the experiment."""
    quiet_libraries()
    args = parser.parse_args(argv)
    quiet_ray(args.verbose)
    try:
        return _run(study_name, args, prepare,
                    variants or (lambda a: {"": Variant(study_name, {})}))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        import ray

        if ray.is_initialized():  # started or connected to; a cluster we joined keeps running
            ray.shutdown()


@dataclass
class Resources:
    gpus: int  # GPUs this command uses
    found: int  # GPUs present (this machine, or the cluster)
    cpus: int  # CPUs available to trials
    nodes: int = 1
    address: str | None = None  # the cluster joined with --address


def connect(address: str):
    """Join a running cluster, shipping this project's packages to every node with the job's
    runtime environment (workers import the same code as the driver)."""
    import ray

    import models
    import results
    import search
    import spaces

    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and "://" not in address:
        # Ray retries an unreachable address for minutes; one quick probe answers at once.
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as e:
            raise InputError(f"--address {address!r}: could not connect to a Ray cluster "
                             f"(nothing answers at {host}:{port}: {e.strerror or e})") from None
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=True,
                 logging_level=os.environ.get("PEFT_SWEEPS_RAY_LOG_LEVEL", "WARNING"),
                 runtime_env={"py_modules": [models, spaces, results, search],
                              "env_vars": {k: os.environ[k] for k in QUIET_ENV}})
    except Exception as e:  # ConnectionError, timeouts, auth
        raise InputError(f"--address {address!r}: could not connect to a Ray cluster "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                         ) from None
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return int(total.get("GPU", 0)), int(total.get("CPU", 0)), len(nodes)


def _check_resources(args) -> Resources:
    if args.reduction_factor <= 1:
        raise InputError(f"--reduction-factor {args.reduction_factor}: must be > 1")
    if args.grace_period > args.max_epochs:
        raise InputError(f"--grace-period {args.grace_period}: must be <= --max-epochs "
                         f"({args.max_epochs})")
    if args.address:
        found, cpus, nodes = connect(args.address)
        where = f"in the cluster at {args.address}"
        if args.gpus is not None and args.gpus > found:
            raise InputError(f"--gpus {args.gpus}: asked for {args.gpus} GPUs, found {found} {where}")
        res = Resources(found if args.gpus is None else args.gpus, found, cpus, nodes, args.address)
        if nodes > 1 and not is_uri(args.storage_path) and not args.storage_is_shared:
            raise InputError(
                f"--storage-path {args.storage_path!r} is a local path of this machine, but the "
                f"cluster has {nodes} nodes and every node writes results and checkpoints there: "
                "use cloud storage (s3://bucket/path, gs://...), or a shared file system mounted "
                "at the same path on every node and pass --storage-is-shared")
    else:
        gpus, found = check_gpus(args.gpus)
        where = "on this machine"
        res = Resources(gpus, found, os.cpu_count() or 1)
    if args.cpus_per_trial > res.cpus:
        raise InputError(f"--cpus-per-trial {args.cpus_per_trial}: only {res.cpus} CPUs {where}")
    if res.gpus and args.gpus_per_trial > res.gpus:
        raise InputError(f"--gpus-per-trial {args.gpus_per_trial}: more than --gpus {res.gpus}")
    return res


def search_metric(study, name: str | None) -> tuple[str, str]:
    """--metric NAME -> (result key, mode) for ``study``."""
    name = name or study.default_search_metric
    if name not in study.search_metrics:
        raise InputError(f"--metric {name}: not offered by the {study.name} study; allowed: "
                         f"{', '.join(study.search_metrics)}")
    return study.search_metrics[name]


def _check_experiment_dir(exp_dir: Path, resume: bool, remote=None) -> None:
    name = exp_dir.name
    where = display(remote, exp_dir.parent, name)
    if resume:
        from ray.tune import Tuner

        ok = (Tuner.can_restore(remote.join(name), storage_filesystem=remote.fs) if remote
              else Tuner.can_restore(str(exp_dir)))
        if not ok:
            raise InputError(f"--resume: no restorable experiment at {where}")
    elif exp_dir.exists() or (remote is not None and remote.exists(name)):
        raise InputError(f"--name {name!r}: {where} already exists; pass --resume to "
                         "continue it (finished trials and retrains are kept) or choose another --name")


def _run(study_name, args, prepare, variants) -> int:
    from models.provenance import provenance
    from models.registry import get_study
    from search import sweep

    defaults = (getattr(args, "_smoke_defaults", SMOKE_DEFAULTS) if args.smoke_test
                else getattr(args, "_defaults", DEFAULTS))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.storage_path is None:
        args.storage_path = "ray_results/smoke" if args.smoke_test else "ray_results"
    if args.smoke_test and args.gpus is None:
        args.gpus = 0
    if args.local_mirror and not is_uri(args.storage_path):
        raise InputError(f"--local-mirror {args.local_mirror!r}: only for a cloud --storage-path "
                         f"(s3://..., gs://...), not {args.storage_path!r}")
    res = _check_resources(args)
    gpus, cpus = res.gpus, res.cpus
    remote = None
    if is_uri(args.storage_path):
        # Tune writes to the bucket; this driver's own files go to a local mirror, then there.
        refuse_credentials_in_uri(args.storage_path, "--storage-path")
        remote = open_remote(args.storage_path)
        mirror = args.local_mirror or str(default_mirror(args.storage_path))
        try:
            storage = check_storage(mirror)
        except InputError as e:
            raise InputError(str(e).replace("--storage-path", "--local-mirror", 1)) from None
    else:
        storage = check_storage(args.storage_path)
    check_optuna_storage(args.optuna_storage)
    trackers = None
    if args.log_to:
        from search.tracking import resolve as resolve_tracking

        trackers = resolve_tracking(args.log_to, mlflow_uri=args.mlflow_tracking_uri,
                                    wandb_project=args.wandb_project, storage=str(storage))
    searcher, scheduler = resolve(args.searcher, args.scheduler)
    name = args.name or study_name
    chosen = variants(args)
    search_metrics = {v.study: search_metric(get_study(v.study), args.metric)
                      for v in chosen.values()}
    warm_study = (check_study(args.warm_start, list(search_metrics))
                  if args.warm_start and not args.resume else None)
    names = {suffix: name + suffix for suffix in chosen}
    for n in names.values():
        _check_experiment_dir(storage / n, args.resume, remote)
    exp_dir = storage / name  # the main experiment; study artefacts (smoke models) live here

    with tempfile.TemporaryDirectory(prefix="sweep-prep-") as scratch:
        # The study loads and checks its data and model here; smoke-test artefacts go to
        # scratch first, so that failing validation leaves nothing behind.
        prepared = prepare(args, Path(scratch), exp_dir)
        gpus_per_trial = args.gpus_per_trial if gpus else 0.0
        concurrency = int(min(cpus // args.cpus_per_trial,
                              gpus // gpus_per_trial if gpus else math.inf))
        if concurrency < 1:
            raise InputError("no trial fits: lower --cpus-per-trial or --gpus-per-trial")
        all_dims = set().union(*(get_study(v.study).space for v in chosen.values()))
        plans = []
        for suffix, variant in chosen.items():
            study = get_study(variant.study)
            fields = study.config_cls.field_names()
            space = {**apply_space_overrides(study.space, args.space, set(study.space),
                                             skip=all_dims),
                     **variant.overrides}
            if all(isinstance(d, Fixed) for d in space.values()):
                # Nothing to search: the searcher gets the given configuration as a one-value
                # choice per dimension, and one trial evaluates it.
                space = {k: Choice((d.value,)) for k, d in space.items()}
                args.num_samples = 1
                print("every search dimension is fixed by --space: one trial evaluates that "
                      "configuration (--num-samples 1)", flush=True)
            fixed = {**prepared.fixed, "max_epochs": args.max_epochs, "seed": args.seed,
                     "num_threads": args.cpus_per_trial, "compile": args.compile,
                     "group_by_length": not args.no_length_grouping}
            fixed = {k: v for k, v in fixed.items() if k not in space and k in fields}
            validate_space(space, study.config_cls, fixed)
            check_batch_fits(space, prepared.train_rows)
            points = (warm_start_points(args.warm_start, study.metric, study.mode, space,
                                        args.warm_start_top)
                      if study.name == warm_study else [])
            metric, mode = search_metrics[study.name]
            objectives = parse_objectives(args.objectives, study, searcher, scheduler,
                                          args.warm_start)
            if objectives:
                metric, mode = objectives[0]
            plans.append(sweep.SweepPlan(
                searcher=searcher, scheduler=scheduler, metric=metric, mode=mode,
                warm_start=points, node_cpus=0 if res.address else cpus,
                study=study, storage_path=storage, name=names[suffix], space=space, fixed=fixed,
                num_samples=args.num_samples, max_epochs=args.max_epochs,
                grace_period=args.grace_period, reduction_factor=args.reduction_factor,
                startup_trials=args.startup_trials, seed=args.seed, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=gpus_per_trial,
                concurrency=concurrency, retrain_top_k=args.retrain_top_k,
                retrain_seeds=args.retrain_seeds, resume=args.resume,
                max_failures=args.max_failures, reuse_actors=res.address is None,
                remote=remote, verbose=args.verbose,
                optuna_storage=args.optuna_storage, tracking=trackers, objectives=objectives,
                # In a shared database, one study per run.
                optuna_study=f"{names[suffix]}-{time.strftime('%Y%m%d-%H%M%S')}"
                if args.optuna_storage else None))
        memory_note = plan_memory(plans, prepared, args, res)
        if args.resume:
            for plan in plans:
                _check_same_search(plan, args)
                _check_same_study(plan, prepared.describe)
        # --- validation done: from here on we write ---
        for plan in plans:
            plan.exp_dir.mkdir(parents=True, exist_ok=True)
            if remote is not None and args.resume:  # maybe another machine: fetch what it lacks
                pull_own_files(remote, plan.name, plan.exp_dir)
        if prepared.finalize:
            exp_dir.mkdir(parents=True, exist_ok=True)
            prepared.finalize(exp_dir)

    import ray

    if not res.address:
        # Ray's own memory resource would be what is available less its object store (30 %
        # of RAM), less than the plan's count: give it the planned figure instead.
        planned = {"_memory": int(memory_note["_available_bytes"])} if memory_note else {}
        # "local": a new Ray of our own, never a cluster someone started with `ray start` on
        # this machine (Ray would join it, and refuse num_cpus there); --address joins one.
        ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False,
                 log_to_driver=True, configure_logging=True,
                 logging_level=os.environ.get("PEFT_SWEEPS_RAY_LOG_LEVEL", "WARNING"), **planned)
    outcomes = []
    try:
        for plan in plans:
            print_plan(plan, prepared, res)
            record = {"study": plan.study.name, "group": name,
                      "command": shlex.join(redact_argv([sys.argv[0], *sys.argv[1:]])),
                      "metric": plan.study.metric, "mode": plan.study.mode,
                      "searcher": plan.searcher, "scheduler": plan.scheduler,
                      "search_seed": plan.seed, "search": describe(plan),
                      "report_split": prepared.report_split or plan.study.report_split,
                      "retrain_weights": plan.study.retrain_weights,
                      "search_metric": plan.metric, "search_mode": plan.mode,
                      "objectives": plan.objectives,
                      "warm_start": ({"from": str(args.warm_start), "points": plan.warm_start}
                                     if plan.warm_start else None),
                      "space": {k: v.describe() for k, v in plan.space.items()},
                      "fixed": plan.fixed, "num_samples": plan.num_samples,
                      "concurrency": plan.concurrency, "memory": memory_note.get(plan.name),
                      "gpus": gpus, "gpus_per_trial": gpus_per_trial,
                      "cpus_per_trial": args.cpus_per_trial, **prepared.describe,
                      "optuna_storage": _masked(plan.optuna_url),
                      "optuna_study": plan.optuna_study_name,
                      "max_epochs": plan.max_epochs, "grace_period": plan.grace_period,
                      "startup_trials": startup_trials(plan),
                      "reduction_factor": plan.reduction_factor,
                      "max_failures": plan.max_failures, "address": res.address,
                      "storage": display(plan.remote, plan.storage_path, plan.name),
                      "nodes": res.nodes, **prepared.extra,
                      **(trackers.describe() if trackers else {}),
                      **provenance()}
            if not (plan.exp_dir / "experiment.json").exists():
                (plan.exp_dir / "experiment.json").write_text(
                    json.dumps(record, indent=1, default=str))
                push(plan, plan.exp_dir / "experiment.json")
            code, summary = _sweep_and_retrain(plan, prepared, provenance())
            if code:
                return code
            outcomes.append((plan, summary))
        if prepared.after:
            prepared.after(outcomes)
    finally:
        if remote is not None:  # also after an interruption: what exists is worth keeping
            for n in {name, *names.values()}:
                print(f"pushing {n} to {display(remote, storage, n)} ...", flush=True)
                push_own_files(remote, n, storage / n)
        ray.shutdown()  # on a cluster: disconnects; the cluster keeps running
    return 0


def _sweep_and_retrain(plan, prepared: Prepared, prov: dict):
    from search import sweep

    try:
        grid = sweep.build_tuner(plan, prepared.data, prov, callbacks=[sweep.progress(plan)],
                                 verbose=int(plan.verbose)).fit()
    except Exception as e:  # noqa: BLE001  (only a storage failure is handled; others re-raise)
        cause = _database_error(e)
        if cause is None:
            raise
        from search.redact import redact_text

        print(f"\nthe Optuna storage {_masked(plan.optuna_url)} stopped answering "
              f"({redact_text(' '.join(str(cause).split())[:240], plan.optuna_url)}); the sweep "
              "stopped. Finished trials are kept: once the database is back, run the same "
              "command plus --resume", file=sys.stderr, flush=True)
        write_tables(plan)
        return 1, None
    finished, statuses = sweep.sweep_finished(plan, grid)
    if plan.remote is not None:  # the tables are built from Tune's files
        pull_tune_files(plan.remote, plan.name, plan.exp_dir)
    interrupted = set()
    if not finished:
        # Which trials the interrupt cut short: the experiment snapshot says (Tune's in-memory
        # statuses mark the trials it stopped on the interrupt TERMINATED too).
        where = sweep._storage(plan, plan.name)
        snapshot = sweep.trial_statuses(where["storage_path"], where.get("storage_filesystem"))
        interrupted = {t for t, st in snapshot.items() if st not in ("TERMINATED", "ERROR")}
    trials, _ = write_tables(plan, known=set(statuses), interrupted=interrupted)
    if finished and plan.resume and plan.searcher in OPTUNA_BACKED:
        from search.optuna_search import fail_orphans

        recorded = json.loads((plan.exp_dir / "experiment.json").read_text())
        fail_orphans(plan.optuna_url, recorded.get("optuna_study") or plan.optuna_study_name,
                     len(statuses))
    if plan.remote is not None:
        push_own_files(plan.remote, plan.name, plan.exp_dir)
    if not finished:
        print(f"\nSweep interrupted after {sum(s == 'TERMINATED' for s in statuses.values())} "
              f"finished trials; continue with the same command plus --resume", flush=True)
        return 130, None
    print_leaderboard(plan, trials)
    if not plan.retrain_top_k:
        return 0, None
    runs, complete = sweep.retrain(plan, trials, prepared.data, prov)
    hp = list(plan.space)
    summary = sweep.summarize_retrain(runs, hp, plan.study.report_columns)
    runs.to_csv(plan.exp_dir / "retrain_runs.csv", index=False)
    summary.to_csv(plan.exp_dir / "retrain.csv", index=False)
    print_retrain(summary, hp, plan, split=prepared.report_split,
                  baseline=(prepared.extra.get("majority_baseline") or {}).get("dev_accuracy"))
    if plan.remote is not None:
        push_own_files(plan.remote, plan.name, plan.exp_dir)
    return (0 if complete else 130), summary


def push(plan, path: Path) -> None:
    """One file of the mirror to the bucket at once (no-op for local storage)."""
    if plan.remote is not None:
        plan.remote.push(path, plan.name, *path.relative_to(plan.exp_dir).parts)


def write_tables(plan, known: set[str] | None = None, interrupted: set[str] = frozenset()):
    """trials.csv and epochs.csv. ``known``: the trial ids in Tune's experiment state; a trial
    folder outside it was started after the last state snapshot of a killed driver and was
    replaced on resume, so it is left out of the tables. ``interrupted``: trials still running
    when the sweep was interrupted (not stopped by the scheduler; --resume continues them)."""
    from results import epoch_frame, read_trials, trial_frame

    records = read_trials(plan.exp_dir)
    if known is not None:
        stray = [r for r in records if r.trial_id not in known]
        records = [r for r in records if r.trial_id in known]
        if stray:
            print(f"(left out of the tables: {len(stray)} trial folder(s) of a killed driver "
                  f"that Tune replaced on resume: {', '.join(r.path.name for r in stray)})",
                  flush=True)
    from results.frames import FAILED, INTERRUPTED

    params = list(plan.space)
    trials = trial_frame(plan.exp_dir, metric=plan.study.metric, mode=plan.study.mode,
                         records=records, params=params)
    epochs = epoch_frame(plan.exp_dir, records=records, params=params)
    if interrupted and len(trials):
        cut = trials["trial_id"].isin(interrupted) & (trials["status"] != FAILED)
        trials.loc[cut, "status"] = INTERRUPTED
    # Which search produced these rows, beside the swept values.
    for frame in (trials, epochs):
        if len(frame):
            frame.insert(1, "searcher", plan.searcher)
            frame.insert(2, "scheduler", plan.scheduler)
            frame.insert(3, "search_seed", plan.seed)
    trials.to_csv(plan.exp_dir / "trials.csv", index=False)
    epochs.to_csv(plan.exp_dir / "epochs.csv", index=False)
    return trials, epochs


def plan_memory(plans: list, prepared: Prepared, args, res: Resources) -> dict:
    """Give every plan a memory per trial and no more trials at once than fit in memory;
    InputError when not even one does. -> what was planned, for experiment.json."""
    from search import memory

    avail = memory.available_bytes(res.address)
    notes = {}
    for plan in plans:
        if args.memory_per_trial:
            est = memory.Estimate(int(args.memory_per_trial * memory.GIB), "--memory-per-trial")
        elif prepared.memory is not None:
            est = prepared.memory(plan.study.name, plan.space, plan.fixed)
        else:
            continue
        fit = int(avail // est.bytes)
        if fit < 1:
            raise InputError(
                f"a trial needs about {est.gib:.1f} GiB ({est.basis}) but "
                f"{avail / memory.GIB:.1f} GiB are available: lower the batch size or the "
                "token limits, use --gradient-checkpointing where offered, or set "
                "--memory-per-trial if the estimate is too high")
        plan.memory_per_trial = est.bytes
        plan.concurrency = min(plan.concurrency, fit)
        notes["_available_bytes"] = avail
        plan.memory_note = notes[plan.name] = {
            "per_trial_gib": round(est.gib, 2), "basis": est.basis,
            "available_gib": round(avail / memory.GIB, 1), "fit": fit}
    return notes


def print_plan(plan, prepared: Prepared, res: Resources) -> None:
    where = (f"{res.gpus} of {res.found} GPUs, {plan.gpus_per_trial:g} GPU + "
             f"{plan.cpus_per_trial:g} CPU per trial" if res.gpus else
             f"CPU only ({res.cpus} CPUs, {plan.cpus_per_trial:g} per trial)")
    if res.address:
        where = f"cluster at {res.address} ({res.nodes} nodes, {res.cpus} CPUs): {where}"
    lines = [f"== {plan.study.name}: {'resuming ' if plan.resume else ''}"
             f"{display(plan.remote, plan.storage_path, plan.name)}",
             *(f"   {k}: {v}" for k, v in prepared.describe.items()),
             f"   resources: {where}; {plan.concurrency} trials at a time; a failed trial is "
             f"retried up to {plan.max_failures} times from its last checkpoint",
             *([f"   memory: {plan.memory_per_trial / 2**30:.1f} GiB per trial ("
                f"{plan.memory_note['basis']}); {plan.memory_note['available_gib']:g} GiB "
                f"available: {plan.memory_note['fit']} fit"] if plan.memory_note else []),
             f"   search: {plan.num_samples} trials x up to {plan.max_epochs} epochs, "
             f"{describe(plan)}; retrain picks by {plan.study.metric}",
             *([f"   warm start: {len(plan.warm_start)} configurations evaluated first"]
               if plan.warm_start else []),
             *(f"   {k}: {v.describe()}" for k, v in plan.space.items()),
             f"   retrain: top {plan.retrain_top_k} x {plan.retrain_seeds} seeds"]
    print("\n".join(lines), flush=True)


def print_leaderboard(plan, trials) -> None:
    from results import leaderboard, read_trials
    from results.report import times_text

    from results.frames import FAILED, STOPPED

    n_stopped = int((trials["status"] == STOPPED).sum()) if "status" in trials else 0
    failed = trials[trials["status"] == FAILED] if "status" in trials else trials.iloc[0:0]
    stops = (f"{n_stopped} stopped early by {SCHEDULERS[plan.scheduler].label}"
             if plan.scheduler != "none" else "no scheduler")
    print(f"\n== Leaderboard ({len(trials)} trials, {stops}, "
          f"{len(failed)} failed, {times_text(**_times(read_trials(plan.exp_dir)))}) — "
          f"{plan.study.metric} on the selection split",
          flush=True)
    for _, t in failed.iterrows():
        print(f"   trial {t['trial_id']} failed: {t['failure']}", flush=True)
    with _pandas_wide():
        print(leaderboard(trials, metric=plan.study.metric, params=list(plan.space))
              .to_string(index=False), flush=True)
    print(f"tables: {plan.exp_dir / 'trials.csv'}, {plan.exp_dir / 'epochs.csv'}", flush=True)


def _times(records) -> dict:
    from results.frames import sweep_times

    t = sweep_times(records)
    return {"active_s": t["active_s"], "elapsed_s": t["elapsed_s"]}


def print_retrain(summary, hp: list[str], plan, *, split: str | None = None,
                  baseline: float | None = None) -> None:
    """``split``: where the retrains were reported, in words (default: the study's);
    ``baseline``: the majority class's accuracy there, shown as the last row."""
    import re

    import pandas as pd

    exp_dir = plan.exp_dir
    if summary.empty:
        print("\n== Retrain: no finished retrains", flush=True)
        return
    from results.tables import display, measured

    shown = display(summary, hp, columns=[c for c in measured(summary)
                                          if re.match(plan.study.report_columns, c)])
    if baseline and "dev_accuracy" in shown:
        row = {c: "" for c in shown.columns}
        row.update({"rank": "majority class", "dev_accuracy": f"{baseline:.4f}", "dev_mcc": "0"})
        shown = pd.concat([shown.astype(object), pd.DataFrame([row])], ignore_index=True)
    print(f"\n== Retrained best configurations, reported on {split or plan.study.report_split} "
          f"(mean ± sd over seeds, {plan.study.retrain_weights})", flush=True)
    with _pandas_wide():
        print(shown.to_string(index=False), flush=True)
    print(f"tables: {exp_dir / 'retrain.csv'}, {exp_dir / 'retrain_runs.csv'}; "
          f"models: {exp_dir / 'retrained'}", flush=True)


def _pandas_wide():
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_columns", 30,
                             "display.float_format", "{:.4g}".format)


def copy_tree(src: Path, dst: Path) -> None:
    if not dst.exists():
        shutil.copytree(src, dst)
