"""Experiment trackers (``--log-to tensorboard,mlflow,wandb``) through Ray Tune's own logger
callbacks: one tracker run per trial (and per retrain job) with its configuration and its
metrics at every epoch.

- tensorboard: ``TBXLoggerCallback``, event files in each trial's folder
  (``tensorboard --logdir <experiment>``);
- mlflow: ``MLflowLoggerCallback``; the tracking URI from ``--mlflow-tracking-uri``, else
  ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<storage-path>/mlflow.db`` (a local store); the MLflow
  experiment is the sweep's name (retrain jobs: ``<name>/retrain``);
- wandb: ``WandbLoggerCallback`` as ``WandbCallback`` below; the project from
  ``--wandb-project``, else ``$WANDB_PROJECT``, else ``peft-sweeps``; the group is the sweep's
  name. ``WANDB_MODE=offline`` keeps runs on disk (``wandb sync`` uploads them later).

A tracker whose package is missing exits 2 before anything starts, naming the extra to install.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from models.errors import InputError

# name -> (module that must import, extra of this project that installs it)
TRACKERS = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}


@dataclass(frozen=True)
class Tracking:
    names: tuple = ()
    mlflow_uri: str | None = None
    wandb_project: str | None = None

    def describe(self) -> dict:
        from search.redact import redact_url

        out = {"log_to": list(self.names)}
        if "mlflow" in self.names:
            out["mlflow_tracking_uri"] = redact_url(self.mlflow_uri)
        if "wandb" in self.names:
            out["wandb_project"] = self.wandb_project
        return out


def parse(text: str) -> tuple:
    """``--log-to`` value: a comma-separated subset of TRACKERS (argparse type)."""
    import argparse

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in TRACKERS]
    if bad or not names:
        what = f"unknown tracker {bad[0]!r}" if bad else "no tracker named"
        raise argparse.ArgumentTypeError(f"{text!r}: {what}; allowed: a comma-separated "
                                         f"subset of {', '.join(TRACKERS)}")
    return names


def resolve(names: tuple, *, mlflow_uri: str | None, wandb_project: str | None,
            storage: str) -> Tracking:
    """Check the trackers' packages and settle where each logs (before anything starts)."""
    for n in names:
        module, extra = TRACKERS[n]
        if importlib.util.find_spec(module) is None:
            raise InputError(f"--log-to {n}: the {module} package is not installed; "
                             f"pip install -e '.[{extra}]'")
    uri = None
    if "mlflow" in names:
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            if "://" in storage:
                raise InputError("--log-to mlflow with a cloud --storage-path: give "
                                 "--mlflow-tracking-uri (or $MLFLOW_TRACKING_URI)")
            # SQLite: MLflow 3 keeps its file store in maintenance mode (refused by default).
            uri = "sqlite:///" + os.path.abspath(os.path.join(storage, "mlflow.db"))
        from search.redact import redact_url, url_secrets

        if url_secrets(uri):  # the callback is pickled with the Tuner (tuner.pkl)
            raise InputError(f"--mlflow-tracking-uri {redact_url(uri)!r}: the URI carries "
                             "credentials, which would be recorded with the experiment; put "
                             "them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                             "MLFLOW_TRACKING_TOKEN) instead")
    project = None
    if "wandb" in names:
        project = wandb_project or os.environ.get("WANDB_PROJECT") or "peft-sweeps"
    return Tracking(tuple(names), uri, project)


def callbacks(tracking: Tracking | None, experiment: str) -> list:
    """Tune logger callbacks for one Tune experiment (a sweep, or its retrain)."""
    if tracking is None:
        return []
    out = []
    if "tensorboard" in tracking.names:
        from ray.tune.logger import TBXLoggerCallback

        out.append(TBXLoggerCallback())
    if "mlflow" in tracking.names:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(MLflowLoggerCallback(tracking_uri=tracking.mlflow_uri,
                                        experiment_name=experiment,
                                        tags={"peft_sweeps_experiment": experiment}))
    if "wandb" in tracking.names:
        out.append(_wandb_classes()["WandbCallback"](
            project=tracking.wandb_project, group=experiment, log_config=True))
    return out


# --- W&B ---------------------------------------------------------------------------------------
# Ray's WandbLoggerCallback with two changes:
# - The API key. Ray puts $WANDB_API_KEY into the runtime_env of the actor that logs each trial,
#   and Ray writes runtime environments to its logs in clear (runtime_env_agent.log). Here the
#   actor class has no runtime_env: the key goes to the actor as an argument of its constructor
#   (held in Ray's memory, not logged), read from the driver's environment when the actor
#   starts, and the actor puts it into its own environment before wandb.init. Ray pins these
#   actors to the driver's node; on a cluster the key need only be where the driver runs, as
#   with Ray's own callback. It is never an attribute of the callback, which Tune pickles.
# - Shutdown. Tune stops the trials it cuts short on an interrupt without telling the loggers,
#   and Ray's callback then waits its upload_timeout (30 min) for those runs to end. Here they
#   are told to finish (keeping what they logged), the wait after an interrupt is
#   WANDB_INTERRUPTED_WAIT_S, and a Ctrl-C during the final upload wait ends it at once.
# Ray internals this relies on (Ray 2.60), checked by name in tests/test_tracking.py:
RAY_WANDB_INTERNALS = {
    "ray.air.integrations.wandb": ("_WandbLoggingActor", "_force_on_current_node"),
    "WandbLoggerCallback": ("_start_logging_actor", "_logger_actor_cls", "_remote_logger_class",
                            "_cleanup_logging_actors", "_trial_logging_futures"),
}
WANDB_INTERRUPTED_WAIT_S = 10  # for wandb.finish of the runs an interrupt cut short
WANDB_UPLOAD_WAIT_S = 1800  # a sweep that ended: for the uploads still pending (Ray's default)
WANDB_KEY = "WANDB_API_KEY"
_KEY_ARG = "_peft_sweeps_wandb_key"  # the actor's constructor argument that carries the key


def __getattr__(name: str):
    if name in ("WandbCallback", "WandbActor"):
        return _wandb_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _wandb_classes() -> dict:
    """``WandbCallback`` and ``WandbActor`` subclass Ray's W&B integration, which imports wandb
    (seconds; an optional extra): made on first use, as attributes of this module, so that
    pickles (tuner.pkl, Ray's actor class) find them here by name."""
    if "WandbCallback" not in globals():
        from ray.air.integrations import wandb as ray_wandb

        actor = type("WandbActor", (_KeyFromDriver, ray_wandb._WandbLoggingActor),
                     {"__module__": __name__})
        globals().update(WandbActor=actor, WandbCallback=type(
            "WandbCallback", (_BoundedWandb, ray_wandb.WandbLoggerCallback),
            {"__module__": __name__, "_logger_actor_cls": actor}))
    return {"WandbCallback": globals()["WandbCallback"], "WandbActor": globals()["WandbActor"]}


class _KeyFromDriver:
    """The logging actor (mixed into Ray's): the API key from its constructor's arguments."""

    def __init__(self, *args, **kwargs):
        key = kwargs.pop(_KEY_ARG, None)  # not one of wandb.init's
        if key:
            os.environ[WANDB_KEY] = key
        super().__init__(*args, **kwargs)


class _BoundedWandb:
    """The callback (mixed into Ray's WandbLoggerCallback): see the notes above."""

    def __init__(self, *args, upload_timeout: int = WANDB_UPLOAD_WAIT_S, **kwargs):
        super().__init__(*args, upload_timeout=upload_timeout, **kwargs)
        self.upload_wait_s = upload_timeout
        self._open: set = set()  # trials whose run was never told to finish

    def log_trial_start(self, trial):
        self._open.add(trial)
        super().log_trial_start(trial)

    def log_trial_end(self, trial, failed: bool = False):
        self._open.discard(trial)
        super().log_trial_end(trial, failed=failed)

    def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
        import ray
        from ray.air.integrations import wandb as ray_wandb

        if not self._remote_logger_class:  # Ray's own would carry the key in a runtime_env
            self._remote_logger_class = ray.remote(
                num_cpus=0, **ray_wandb._force_on_current_node(), max_restarts=-1,
                max_task_retries=-1)(self._logger_actor_cls)
        key = os.environ.get(WANDB_KEY)
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs,
                                     **({_KEY_ARG: key} if key else {}))

    def on_experiment_end(self, trials, **info):
        cut = list(self._open)
        for trial in cut:  # interrupted: their runs end with what they logged
            self.log_trial_end(trial)
        deadline = time.monotonic() + (WANDB_INTERRUPTED_WAIT_S if cut else self.upload_wait_s)
        with _sigint_noted() as interrupted:
            while (self._trial_logging_futures and time.monotonic() < deadline
                   and not interrupted.is_set()):
                self._cleanup_logging_actors(timeout=1)  # those whose wandb.finish returned
        self._cleanup_logging_actors(timeout=0, kill_on_timeout=True)


@contextmanager
def _sigint_noted():
    """An event set by a Ctrl-C meanwhile, which is then passed on to whoever handled SIGINT
    before (Tune marks its experiment interrupted; Python raises KeyboardInterrupt)."""
    seen = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield seen  # signal handlers belong to the main thread
        return
    before = signal.signal(signal.SIGINT, lambda *_: seen.set())
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, before)
        if seen.is_set() and callable(before):
            before(signal.SIGINT, None)
