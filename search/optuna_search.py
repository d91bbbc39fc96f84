"""Ray's OptunaSearch, telling Optuna what happened to each trial.

Ray's own class tells Optuna COMPLETE, with the truncated score, for a trial the scheduler
stopped (Tune hands the stopping result to ``on_trial_complete``), and that result's
intermediate value never arrives: TPE then models epoch-1 scores as final ones, and
optuna-dashboard shows every trial "Complete". Here each epoch is one intermediate value
(``trial.report(value, epoch)``), a trial stopped by the scheduler is PRUNED (Optuna's
samplers use its last intermediate value as such), one that ran to its end (its last epoch,
or patience ran out) is COMPLETE with its final value, and one that failed (or never
reported) is FAIL."""
from __future__ import annotations

import math

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class PrunedAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._steps: dict[str, set] = {}  # epochs already reported, per trial
        # Each trial's latest result: HyperBand stops a paused trial without a new one.
        self._last: dict[str, dict] = {}

    def _report(self, trial_id: str, result: dict) -> None:
        if result:
            self._last[trial_id] = {k: result.get(k) for k in (self.metric, "last_epoch",
                                                                "failure")}
        value, step = result.get(self.metric), result.get("epoch")
        done = self._steps.setdefault(trial_id, set())
        if _finite(value) and isinstance(step, int) and step not in done:
            done.add(step)
            try:
                self._ot_trials[trial_id].report(float(value), step)
            except UpdateFinishedTrialError:
                # Resumed after a hard kill: the study (written at once) already holds this
                # trial as finished, while Tune's last snapshot had it still running.
                pass

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials and trial_id in self._ot_trials:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._report(trial_id, result or {})  # the stopping epoch's value
        result = self._last.pop(trial_id, {})
        value = result.get(self.metric)
        if error or result.get("failure"):
            state, value = TrialState.FAIL, None
        elif result.get("last_epoch") and _finite(value):
            state, value = TrialState.COMPLETE, float(value)
        elif self._steps.get(trial_id):  # stopped by the scheduler
            state, value = TrialState.PRUNED, None
        else:
            state, value = TrialState.FAIL, None
        try:
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        except (UpdateFinishedTrialError, ValueError):
            pass  # already told before a hard kill (see _report)
        self._completed_trials.add(trial_id)
        self._steps.pop(trial_id, None)
