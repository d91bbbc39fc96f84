"""Checks of a command's settings against the world before anything starts: the storage path
and the experiment directory (--name, --resume), the Optuna storage (driver, connection,
credentials), --resume against the recorded experiment, --metric, --objectives, batch sizes
against the data; and recognising a storage failure during a sweep."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from models.errors import InputError
from results.storage import display
from search.redact import ENV_OPTUNA_STORAGE, MASK


def check_batch_fits(space: dict, train_rows: int | None) -> None:
    """A batch larger than the training split is the whole split at any size: a value that
    large is a typo, not a setting."""
    dim = space.get("batch_size")
    if dim is None or not train_rows:
        return
    top = max(dim.edges())
    if top > train_rows:
        raise InputError(f"search space batch_size = {dim.describe()}: {top} is more than the "
                         f"{train_rows} training rows a trial has; allowed: 1 to {train_rows}")


def check_optuna_storage(url: str | None) -> None:
    """A URL SQLAlchemy can parse, whose database driver is installed and, for a server, that
    accepts a connection with these credentials; checked before Ray starts. Messages show the
    URL redacted (``search.redact``)."""
    if url is None:
        return
    from search.redact import redact_text, redact_url, register_optuna_url

    shown = redact_url(url)
    register_optuna_url(url)  # for unpickling the searcher on --resume
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except ImportError as e:
        driver = {"postgresql": "psycopg (pip install -e '.[postgres]')",
                  "mysql": "PyMySQL"}.get(url.split(":", 1)[0].split("+", 1)[0], "its driver")
        raise InputError(f"--optuna-storage {shown!r}: the database driver is not installed "
                         f"({redact_text(str(e).splitlines()[0][:160], url)}); install "
                         f"{driver}") from None
    except Exception as e:  # ArgumentError (syntax), NoSuchModuleError
        raise InputError(f"--optuna-storage {shown!r}: not a usable database URL ("
                         f"{type(e).__name__}: {redact_text(str(e).splitlines()[0][:160], url)}"
                         "); expected e.g. sqlite:///path/optuna.db or "
                         "postgresql://user:password@host/db") from None
    if parsed.password is not None and "@" in (parsed.host or ""):
        # SQLAlchemy ends the password at its first '@' and takes the rest as the host
        raise InputError(f"--optuna-storage {shown!r}: the password holds a raw '@', which "
                         "ends it early; write each '@' in the password as %40")
    if parsed.get_backend_name() == "sqlite":
        return
    from sqlalchemy import create_engine, text

    args = {"connect_timeout": 10} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
    engine = create_engine(url, connect_args=args, pool_pre_ping=False)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:  # OperationalError: unreachable, refused, bad credentials, no db
        reason = redact_text(" ".join(str(getattr(e, "orig", e)).split())[:240], url)
        raise InputError(f"--optuna-storage {shown!r}: cannot connect ({reason}); check the "
                         "server is running and reachable, the user, the password and the "
                         "database") from None
    finally:
        engine.dispose()


def _masked(url: str) -> str:
    """The URL as it may be written to disk: credentials hidden."""
    from search.redact import redact_url

    return redact_url(url)


COST_OBJECTIVES = ("trainable_params",)  # recorded in every result row of every study


def parse_objectives(text: str | None, study, searcher: str, scheduler: str,
                     warm_start) -> list[tuple[str, str]] | None:
    """--objectives NAME:MODE,... -> [(result key, mode)], checked against the study, the
    searcher and the scheduler."""
    if not text:
        return None
    from search.algorithms import MULTI_OBJECTIVE

    if scheduler != "none":
        raise InputError(f"--objectives {text}: needs --scheduler none (a scheduler ranks and "
                         f"stops trials on one metric; --scheduler is {scheduler})")
    if searcher not in MULTI_OBJECTIVE:
        raise InputError(f"--objectives {text}: --searcher {searcher} takes one objective; "
                         f"use one of {', '.join(sorted(MULTI_OBJECTIVE))}")
    if warm_start:
        raise InputError(f"--objectives {text}: --warm-start gives one value per "
                         "configuration; it cannot seed several objectives")
    out = []
    for item in text.split(","):
        name, _, mode = item.strip().partition(":")
        if mode not in ("max", "min"):
            raise InputError(f"--objectives {text}: {item!r} needs :max or :min")
        if name in study.search_metrics:
            key, natural = study.search_metrics[name]
            if mode != natural:
                raise InputError(f"--objectives {text}: {name} is better when {natural}imized, "
                                 f"not {mode}imized")
        elif name in COST_OBJECTIVES:
            key = name
        else:
            raise InputError(f"--objectives {text}: unknown objective {name!r}; allowed: "
                             f"{', '.join([*study.search_metrics, *COST_OBJECTIVES])}")
        out.append((key, mode))
    if len(out) < 2 or len({k for k, _ in out}) < len(out):
        raise InputError(f"--objectives {text}: name two or more different objectives")
    return out


def _check_same_search(plan, args) -> None:
    """--resume continues the searcher, scheduler and metric the experiment was started with
    (Tune restores them): a flag left out takes the recorded value; one given with another
    value exits 2 rather than being ignored."""
    recorded = recorded_experiment(plan.exp_dir)
    if recorded is None:
        return
    stored = recorded.get("optuna_storage") or ""
    if MASK in stored and _masked(args.optuna_storage or "") != stored:
        raise InputError(
            f"--optuna-storage {_masked(args.optuna_storage) if args.optuna_storage else '(not given)'}: "
            f"the experiment {plan.name!r} keeps its Optuna study in {stored}; --resume needs that "
            f"URL with its password (the flag, or ${ENV_OPTUNA_STORAGE}), which is never recorded")
    for flag, key, given in (("--searcher", "searcher", args.searcher),
                             ("--scheduler", "scheduler", args.scheduler),
                             ("--metric", "search_metric", args.metric)):
        attr = "metric" if key == "search_metric" else key
        if key not in recorded or recorded[key] == getattr(plan, attr):
            continue
        if given is not None:
            raise InputError(f"{flag} {given}: the experiment {plan.name!r} was started with "
                             f"{key} {recorded[key]!r}; --resume continues it as it was "
                             "started (leave the flag out or give the recorded value)")
        setattr(plan, attr, recorded[key])
        if key == "search_metric":
            plan.mode = recorded.get("search_mode", plan.mode)


# Settings a trial may change on --resume without changing the study (how it runs, not what).
# The memory plan's micro-batches and checkpointing fit a trial to the machine: the same
# optimizer steps, recomputed or split (search.memory.fit_batch).
_RUN_ONLY = {"num_threads", "compile", "group_by_length", "micro_batch_size",
             "gradient_checkpointing"}


_DESCRIBE_FLAGS = {"model": "--model", "data": "--data-dir", "rows": "--max-train-samples",
                   "teacher": "--teacher"}


def _check_same_study(plan, describe: dict) -> None:
    """--resume continues the experiment as it was started: a flag that defines the study
    (model, data and its subset, space, seed, epochs, trials) given with another value exits
    2 naming the flag and the recorded value, instead of silently reloading the old sweep."""
    recorded = recorded_experiment(plan.exp_dir)
    if recorded is None:
        return
    inside = f"/{plan.name}/"

    def plain(v):
        """As recorded; a path inside the experiment (the smoke test's model) relative to it,
        so that a moved experiment still matches."""
        v = json.loads(json.dumps(v, default=str))
        return v.split(inside, 1)[1] if isinstance(v, str) and inside in v else v

    checks = [("--num-samples", "num_samples", plan.num_samples),
              ("--max-epochs", "max_epochs", plan.max_epochs),
              ("--seed", "search_seed", plan.seed),
              ("--space", "space", {k: v.describe() for k, v in plan.space.items()})]
    checks += [(_DESCRIBE_FLAGS.get(k, k), k, v) for k, v in describe.items()
               if k in _DESCRIBE_FLAGS]
    fixed = {k: v for k, v in plan.fixed.items() if k not in _RUN_ONLY}
    old_fixed = {k: v for k, v in recorded.get("fixed", {}).items() if k not in _RUN_ONLY}
    checks += [(f"--{k.replace('_', '-')}", f"fixed/{k}", fixed.get(k))
               for k in sorted(set(fixed) | set(old_fixed))]
    for flag, key, now in checks:
        before = old_fixed.get(key[6:]) if key.startswith("fixed/") else recorded.get(key)
        if key in recorded or key.startswith("fixed/"):
            if plain(now) != plain(before):
                hint = (" (to run more trials, start a new experiment with --warm-start "
                        f"{plan.exp_dir})" if flag == "--num-samples" else "")
                raise InputError(f"{flag} {plain(now)!r}: the experiment {plan.name!r} was started "
                                 f"with {key.removeprefix('fixed/')} {before!r}; --resume "
                                 f"continues it as it was started{hint}")


def recorded_experiment(exp_dir: Path) -> dict | None:
    """``experiment.json`` of ``exp_dir`` as a dict; None when there is none; InputError when
    it is not a JSON object (damaged or edited by hand)."""
    record = exp_dir / "experiment.json"
    if not record.is_file():
        return None
    try:
        recorded = json.loads(record.read_text())
    except ValueError as e:
        raise InputError(f"--resume: {record} is not valid JSON ({e}); restore it, or delete "
                         f"{exp_dir} and run the command without --resume") from None
    if not isinstance(recorded, dict):
        raise InputError(f"--resume: {record} holds a JSON {type(recorded).__name__}, not the "
                         f"experiment's record (an object); restore it, or delete {exp_dir} and "
                         "run the command without --resume")
    return recorded


def check_same_flags(exp_dir: Path, args) -> None:
    """--resume: every flag declared KEEP (search.flags.declare) has the value the experiment
    was started with; a difference exits 2 naming the flag and both values. Experiments
    recorded before flags were recorded are compared by ``_check_same_study`` alone."""
    from search.flags import flag_name, study_flags

    recorded = (recorded_experiment(exp_dir) or {}).get("flags")
    if not isinstance(recorded, dict):
        return
    for dest, now in study_flags(args).items():
        if dest in recorded and recorded[dest] != now:
            raise InputError(f"{flag_name(dest)} {_shown(now)}: the experiment {exp_dir.name!r} "
                             f"was started with {flag_name(dest)} {_shown(recorded[dest])}; "
                             "--resume continues it as it was started (give the first run's "
                             "flags again, plus --resume)")


def _shown(value) -> str:
    if value is None:
        return "(not given)"
    if isinstance(value, bool):
        return "(given)" if value else "(not given)"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "(none)"
    return repr(value) if isinstance(value, str) else str(value)


def _database_error(e: BaseException):
    """The database error somewhere in ``e``'s chain (Tune wraps what the searcher raised), or
    None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__module__.startswith(("sqlalchemy", "psycopg", "sqlite3")) and \
                "Error" in type(e).__name__:
            return e
        e = e.__cause__ or e.__context__
    return None


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
            left = exp_dir.exists() or (remote is not None and remote.exists(name))
            raise InputError(
                f"--resume: no restorable experiment at {where}" + (
                    " (its sweep stopped before Tune saved any state, so there is nothing to "
                    f"continue); delete {where} and run the command without --resume"
                    if left else ""))
    elif exp_dir.exists() or (remote is not None and remote.exists(name)):
        from ray.tune import Tuner

        restorable = (Tuner.can_restore(remote.join(name), storage_filesystem=remote.fs)
                      if remote else Tuner.can_restore(str(exp_dir)))
        raise InputError(f"--name {name!r}: {where} already exists; " + (
            "pass --resume to continue it (finished trials and retrains are kept) or choose "
            "another --name" if restorable else
            "it holds no sweep to continue (it stopped before Tune saved any state): delete "
            f"{where}, or choose another --name"))
