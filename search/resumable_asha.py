"""ASHA whose rungs survive ``--resume``.

``Tuner.restore`` brings back the searcher but not the scheduler (ray-project/ray#30838): a
resumed sweep starts with empty rungs, so a trial under the cut-off that was recorded before
the interrupt runs on to the end. Tune does save and restore the state of its callbacks with
the experiment's own checkpoint (the same snapshot as the trials' statuses, in the bucket too
with cloud storage), so ``RungState``, a callback holding the scheduler, carries the rungs and
each trial's bracket through it. The scheduler and the callback are pickled together in the
Tuner's state, so the restored callback still holds the restored scheduler."""
from __future__ import annotations

from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler


class ResumableASHA(AsyncHyperBandScheduler):
    """ASHA with ``state()``/``load_state()``: rungs as {milestone: {trial_id: value}}."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._restored_brackets: dict[str, int] = {}

    def state(self) -> dict:
        index = {id(b): i for i, b in enumerate(self._brackets)}
        return {"rungs": [[(m, dict(rec)) for m, rec in b._rungs] for b in self._brackets],
                "brackets": {tid: index[id(b)] for tid, b in self._trial_info.items()},
                "num_stopped": self._num_stopped}

    def load_state(self, state: dict) -> None:
        for bracket, rungs in zip(self._brackets, state["rungs"]):
            bracket._rungs = [(m, dict(rec)) for m, rec in rungs]
        self._restored_brackets = dict(state["brackets"])
        self._num_stopped = state["num_stopped"]

    def on_trial_add(self, tune_controller, trial) -> None:
        # A restored trial goes back to its own bracket (with several brackets the choice is
        # random); every other trial is placed as ASHA places it.
        index = self._restored_brackets.pop(trial.trial_id, None)
        super().on_trial_add(tune_controller, trial)
        if index is not None:
            self._trial_info[trial.trial_id] = self._brackets[index]

    def rungs(self) -> list[dict]:
        """[{milestone: {trial_id: value}}] per bracket, lowest milestone first (for tests and
        the console)."""
        return [dict(reversed(b._rungs)) for b in self._brackets]


class RungState(tune.Callback):
    """Saves ``scheduler``'s rungs with every experiment checkpoint and puts them back when
    Tune restores the experiment."""

    def __init__(self, scheduler: ResumableASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {"asha": self.scheduler.state()}

    def set_state(self, state: dict) -> None:
        self.scheduler.load_state(state["asha"])
