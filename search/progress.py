"""The sweep's own console lines: one per finished trial-epoch, one per scheduler decision or
failure, one per retrain job, and a heartbeat so that the console is never silent for more than
``HEARTBEAT_S`` while trials run. Ray's status tables are shown only with ``-v``.

A Tune callback on the driver (Tune calls ``on_step_begin`` on every pass of its control loop,
a fraction of a second apart, which is what lets the heartbeat keep its promise)."""
from __future__ import annotations

import math
import time

from ray.tune import Callback

from models.console import HEARTBEAT_S, clock


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-"
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}"


def _say_line(text: str) -> None:
    print(text, flush=True)


class Progress(Callback):
    """A Tune callback printing the lines above. ``shown``: result keys printed per epoch
    (the ranking metric, then the study's); ``best_key``: whose best so far is carried along
    (``mode`` max/min); ``stopper``: the scheduler's name, None when nothing stops trials;
    ``label``: "trial" or "retrain job". Module-level and holding plain data, because Tune
    pickles its callbacks with the experiment (a resumed sweep gets this one back)."""

    def __init__(self, *, shown: list[str], best_key: str, mode: str, max_epochs: int | None,
                 stopper: str | None, label: str = "trial"):
        self.shown, self.best_key, self.mode = shown, best_key, mode
        self.max_epochs, self.stopper, self.label = max_epochs, stopper, label
        self.setup()

    def setup(self, **info):
        # Also called by Tune when a (resumed) sweep starts: the clock starts afresh.
        self.t0 = self.last_line = time.time()
        self.best: tuple[float, str] | None = None
        self.epochs: dict[str, int] = {}
        self.last: dict[str, dict] = {}
        self.done = 0

    def _say(self, text: str) -> None:
        _say_line(f"[{clock(time.time() - self.t0):>9}] {text}")
        self.last_line = time.time()

    def _name(self, trial) -> str:
        job = (trial.config or {}).get("job")
        return (f"{self.label} {job['_job']}" if isinstance(job, dict)
                else f"{self.label} {trial.trial_id}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"{self._name(trial)} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = result.get("epoch")
        self.epochs[trial.trial_id] = epoch or 0
        self.last[trial.trial_id] = result
        value = result.get(self.best_key)
        if isinstance(value, (int, float)) and not math.isnan(value):
            if self.best is None or (value > self.best[0] if self.mode == "max"
                                     else value < self.best[0]):
                self.best = (float(value), trial.trial_id)
        of = f"/{self.max_epochs}" if self.max_epochs else ""
        parts = ", ".join(f"{k} {_fmt(result.get(k))}" for k in self.shown if k in result)
        best = (f" | best {self.best_key.removeprefix('best_')} so far {_fmt(self.best[0])} "
                f"(trial {self.best[1]})" if self.best and self.label == "trial" else "")
        self._say(f"{self._name(trial)} epoch {epoch}{of}: {parts}{best}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        result = trial.last_result or self.last.get(trial.trial_id) or {}
        epoch = result.get("epoch", self.epochs.get(trial.trial_id))
        if isinstance(result.get("failure"), str):
            self._say(f"{self._name(trial)} failed at epoch {epoch}: {result['failure']}")
        elif result.get("last_epoch"):
            why = " (no better score for a while)" if result.get("patience_stop") else ""
            self._say(f"{self._name(trial)} completed after {epoch} epochs{why}")
        elif self.stopper:
            self._say(f"{self._name(trial)} stopped by {self.stopper} after epoch {epoch}")
        else:
            self._say(f"{self._name(trial)} ended after epoch {epoch}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        self._say(f"{self._name(trial)} failed (an error; Tune may retry it from its last "
                  "checkpoint)")

    def on_step_begin(self, iteration, trials, **info):
        if time.time() - self.last_line < HEARTBEAT_S:
            return
        running = [t for t in trials if t.status == "RUNNING"]
        pending = sum(t.status == "PENDING" for t in trials)
        if running:
            where = ", ".join(f"{t.trial_id} in epoch {self.epochs.get(t.trial_id, 0) + 1}"
                              for t in running[:4])
            self._say(f"... {len(running)} running ({where}), {pending} waiting, "
                      f"{self.done} ended")
        else:
            self._say(f"... waiting for resources: {pending} pending, {self.done} ended")


def progress_callback(**kwargs) -> Progress:
    return Progress(**kwargs)
