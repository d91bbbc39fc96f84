"""Experiment trackers (``--log-to tensorboard,mlflow,wandb``) through Ray Tune's own logger
callbacks: one tracker run per trial (and per retrain job) with its configuration and its
metrics at every epoch.

- tensorboard: ``TBXLoggerCallback``, event files in each trial's folder
  (``tensorboard --logdir <experiment>``);
- mlflow: ``MLflowLoggerCallback``; the tracking URI from ``--mlflow-tracking-uri``, else
  ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<storage-path>/mlflow.db`` (a local store); the MLflow
  experiment is the sweep's name (retrain jobs: ``<name>/retrain``);
- wandb: ``WandbLoggerCallback``; the project from ``--wandb-project``, else
  ``$WANDB_PROJECT``, else ``peft-sweeps``; the group is the sweep's name. ``WANDB_MODE=offline``
  keeps runs on disk (``wandb sync`` uploads them later).

A tracker whose package is missing exits 2 before anything starts, naming the extra to install.
"""
from __future__ import annotations

import importlib.util
import os
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
        from ray.air.integrations.wandb import WandbLoggerCallback

        out.append(WandbLoggerCallback(project=tracking.wandb_project, group=experiment,
                                       log_config=True))
    return out
