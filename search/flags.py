"""The flags every study shares: argument types that name their flag in argparse's own exit-2
error, the shared parser, CoLA's data flags, per-study defaults, and ``--space`` parsing and
validation against the study's config."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from models.errors import ConfigError, InputError
from search.algorithms import DEFAULT_SEARCHER, SCHEDULERS, SEARCHERS
from search.redact import ENV_OPTUNA_STORAGE
from search.tracking import parse as tracking_parse
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


def pack_count(text: str) -> int | str:
    """--pack: a number of trials, or "auto" (the plan probes for it)."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed: a number of trials >= 1, or auto") from None


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


# --- what each flag is to --resume ------------------------------------------------------------
# A resumed sweep must compute what the interrupted one did. Every flag of every command is
# declared with one of these kinds, beside the flags themselves (``declare``); a test fails when
# a flag is left out. experiment.json records the KEEP flags, and --resume compares them.
KEEP = "keep"  # changes what a trial computes or which trials run: --resume needs the recorded value
OWN = "own"  # compared on --resume by its own rule (search.checks: searcher, storage, name, ...)
FREE = "free"  # how or where the sweep runs, not what it computes: may differ on --resume
KINDS = (KEEP, OWN, FREE)


def declare(parser: argparse.ArgumentParser, **kinds: str) -> None:
    """Declare what flags (by ``dest``) are to --resume; see KEEP, OWN, FREE."""
    bad = {d: k for d, k in kinds.items() if k not in KINDS}
    assert not bad, f"unknown resume kinds {bad}; allowed {KINDS}"
    parser.set_defaults(_resume_kinds={**(parser.get_default("_resume_kinds") or {}), **kinds})


def study_flags(args: argparse.Namespace) -> dict:
    """The KEEP flags' values as given (defaults applied), paths made absolute: what
    experiment.json records and --resume compares."""
    import json

    def plain(v):
        if isinstance(v, str) and v and os.path.exists(v):
            return str(Path(v).resolve())
        return json.loads(json.dumps(v, default=str))

    return {d: plain(getattr(args, d, None))
            for d, k in sorted(vars(args).get("_resume_kinds", {}).items()) if k == KEEP}


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those flags say in words what happens without them)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The flags every command shares, in --help's groups. Long (~100 lines) but flat: one
    ``add_argument`` per flag, kept together so --help and this list read the same."""
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
    g.add_argument("--pack", type=pack_count, default=1, metavar="K|auto",
                   help="train up to K trials at once on one shared copy of the base model, "
                        "each still its own trial (methods that cannot be packed run unpacked, "
                        "and the plan says so); the retrain runs unpacked. auto: as many as "
                        "memory allows and a short timing of packed steps on the engine's "
                        "device shows to pay (the knee of the throughput curve)")
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
    declare(p, verbose=FREE, gpus=FREE, gpus_per_trial=FREE, cpus_per_trial=FREE, address=FREE,
            memory_per_trial=FREE, storage_is_shared=FREE, compile=FREE, log_to=FREE,
            mlflow_tracking_uri=FREE, wandb_project=FREE, local_mirror=FREE, max_failures=FREE,
            # ignored with --resume: the restored searcher has its points already
            warm_start=FREE, warm_start_top=FREE,
            searcher=OWN, scheduler=OWN, metric=OWN, name=OWN, storage_path=OWN,
            optuna_storage=OWN, resume=OWN,
            num_samples=KEEP, max_epochs=KEEP, objectives=KEEP, startup_trials=KEEP,
            grace_period=KEEP, reduction_factor=KEEP, seed=KEEP, space=KEEP,
            max_train_samples=KEEP, retrain_top_k=KEEP, pack=KEEP, retrain_seeds=KEEP,
            smoke_test=KEEP,
            # length-grouped batches hold other sentences than shuffled ones
            no_length_grouping=KEEP)
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
    declare(group, data_dir=KEEP, max_length=KEEP, selection_fraction=KEEP)


def load_cola_splits(args):
    """CoLA from --data-dir, else the hub (a generated set for --smoke-test). A smoke test on
    real data trains on a slice, unless --max-train-samples says otherwise."""
    from models.data.cola import load_cola_dir, load_cola_hub, synthetic_cola

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
