"""Schedulers whose bookkeeping survives ``--resume``: ASHA's rungs, HyperBand's brackets (BOHB's
too) and the median rule's results.

``Tuner.restore`` brings back the searcher but not the scheduler (ray-project/ray#30838): a
resumed sweep would start with empty bookkeeping, so a trial under a cut-off (or the median)
before the interrupt runs on to the end. Tune does save and restore the state of its callbacks
with the experiment's own checkpoint (the same snapshot as the trials' statuses, in the bucket
too with cloud storage), so ``SchedulerState``, a callback holding the scheduler, carries the
bookkeeping through it. The scheduler and the callback are pickled together in the Tuner's
state, so the restored callback still holds the restored scheduler.

The state is kept by trial id: a restored experiment's trials are new ``Trial`` objects, added
to the scheduler again (in another order) after the callbacks' state is set, and each is linked
back into its place as ``on_trial_add`` sees it.

A decision to stop a trial can be taken but not yet carried out when the interrupt comes (Tune
holds it back while the result's checkpoint is saved, and does not carry it out after a restore);
the trial would then be resumed and run on. ``_StopsCarriedOver`` keeps the ids of the trials
told to stop and not yet ended, and ends each again as it is added back. Ray has no public way to read or set this
state: the private attributes used are all named in ``RAY_PRIVATE``."""
from __future__ import annotations

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import (AsyncHyperBandScheduler, HyperBandForBOHB, HyperBandScheduler,
                                 MedianStoppingRule, TrialScheduler)
from ray.tune.utils.util import flatten_dict
from ray.tune.schedulers.async_hyperband import _Bracket as AsyncBracket
from ray.tune.schedulers.hyperband import _Bracket as HyperBandBracket

# A HyperBand bracket's numbers (its shape and progress), and its containers of trials.
_BRACKET_NUMBERS = ("_time_attr", "_n0", "_r0", "_max_t_attr", "_eta", "_total_work",
                    "stop_last_trials", "_n", "_r", "_cumul_r", "_halves", "_completed_progress",
                    "is_being_processed")
_BRACKET_TRIALS = ("_live_trials", "_all_trials", "trials_to_unpause")

# Every private attribute of Ray's this module reads or writes (Ray 2.60);
# tests/test_scheduler_state.py fails naming the one a new Ray moved.
RAY_PRIVATE = {
    AsyncHyperBandScheduler: ("_brackets", "_trial_info", "_num_stopped"),
    AsyncBracket: ("_rungs",),
    HyperBandScheduler: ("_hyperbands", "_trial_info", "_state", "_num_stopped", "_time_attr",
                         "_metric"),
    HyperBandBracket: _BRACKET_NUMBERS + _BRACKET_TRIALS,
    MedianStoppingRule: ("_results", "_stopped_trials", "_last_pause", "_time_attr", "_metric"),
}


def _tid(trial) -> str:
    # A restored trial not yet added again is still held by its id.
    return trial if isinstance(trial, str) else trial.trial_id


def _slim(result: dict | None, keys: tuple) -> dict | None:
    # The schedulers read a result's time and metric only; the rest would bloat every snapshot.
    return None if result is None else {k: result[k] for k in keys if k in result}


class SchedulerState(tune.Callback):
    """Saves ``scheduler``'s bookkeeping with every experiment checkpoint and puts it back when
    Tune restores the experiment."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {"scheduler": self.scheduler.saved_state()}

    def set_state(self, state: dict) -> None:
        self.scheduler.load_state(state["scheduler"])


class _StopsCarriedOver:
    """Ends again, as it is added back after a restore, a trial told to stop whose stop the
    interrupt cut off: what Tune's ``stop_trial`` does for a running trial (the scheduler and
    the searcher are told it completed with its last result), without the controller's own
    bookkeeping, which cannot be changed while the trial is being added (Tune files it under
    the status it leaves with)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stopping: set[str] = set()
        self._restored_stops: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self._stopping.add(trial.trial_id)
        return decision

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._stopping.discard(trial.trial_id)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._stopping.discard(trial.trial_id)
        super().on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._stopping.discard(trial.trial_id)
        super().on_trial_error(tune_controller, trial)

    def saved_state(self) -> dict:
        return {**super().saved_state(), "stopping": sorted(self._stopping)}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self._restored_stops = set(state.get("stopping", ()))  # absent: saved before this

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if trial.trial_id not in self._restored_stops:
            return
        self._restored_stops.discard(trial.trial_id)
        if trial.is_finished():
            return
        result = flatten_dict(trial.last_result or {})
        if result:
            self.on_trial_complete(tune_controller, trial, result)
            tune_controller.search_alg.on_trial_complete(trial.trial_id, result=result)
        else:
            self.on_trial_remove(tune_controller, trial)
            tune_controller.search_alg.on_trial_complete(trial.trial_id)
        trial.set_status(Trial.TERMINATED)


class _ASHARungs(AsyncHyperBandScheduler):
    """ASHA with ``saved_state()``/``load_state()``: rungs as {milestone: {trial_id: value}}."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._restored_brackets: dict[str, int] = {}

    def saved_state(self) -> dict:
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


class _ResumableBrackets:
    """HyperBand's bands of brackets by trial id, for ``HyperBandScheduler`` and BOHB's
    ``HyperBandForBOHB`` alike (they differ in where a new trial goes, not in what they keep)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._restored_places: dict[str, tuple[int, int]] = {}

    def saved_state(self) -> dict:
        place = {id(b): (i, j) for i, band in enumerate(self._hyperbands)
                 for j, b in enumerate(band) if b is not None}
        current = self._state["bracket"]
        return {"bands": [[None if b is None else self._bracket_state(b) for b in band]
                          for band in self._hyperbands],
                "places": dict(sorted((_tid(t), place[id(b)])
                                      for t, (b, _) in self._trial_info.items())),
                "current": None if current is None else place[id(current)],
                "band_idx": self._state["band_idx"], "num_stopped": self._num_stopped}

    def _bracket_state(self, bracket) -> dict:
        keys = (self._time_attr, self._metric)
        return {"numbers": {k: getattr(bracket, k) for k in _BRACKET_NUMBERS},
                "live": {_tid(t): _slim(r, keys) for t, r in bracket._live_trials.items()},
                "all": [_tid(t) for t in bracket._all_trials],
                "unpause": sorted(_tid(t) for t in bracket.trials_to_unpause)}

    def load_state(self, state: dict) -> None:
        self._hyperbands = [[None if b is None else _bracket_from(b) for b in band]
                            for band in state["bands"]]
        current = state["current"]
        self._state = {"bracket": None if current is None
                       else self._hyperbands[current[0]][current[1]],
                       "band_idx": state["band_idx"]}
        self._num_stopped = state["num_stopped"]
        # Each bracket holds its trials by id until Tune adds them again.
        self._restored_places = {tid: tuple(p) for tid, p in state["places"].items()}

    def on_trial_add(self, tune_controller, trial) -> None:
        place = self._restored_places.pop(trial.trial_id, None)
        if place is None:
            super().on_trial_add(tune_controller, trial)
            return
        bracket = self._hyperbands[place[0]][place[1]]
        _relink(bracket, trial)
        self._trial_info[trial] = bracket, place[0]
        if trial.is_finished():  # it left its bracket when it ended
            return
        if trial not in bracket._live_trials:
            # It had left its bracket with an error and is resumed: placed as a new trial is.
            super().on_trial_add(tune_controller, trial)
        elif not bracket.continue_trial(trial) and trial not in bracket.trials_to_unpause:
            # It waited at its milestone for the rest of its bracket. Tune resumes every
            # unfinished trial as PENDING and would run it on past the milestone, so that the
            # halving compared it at a later epoch than the others; Tune keeps the status set
            # here.
            trial.set_status(Trial.PAUSED)


def _bracket_from(state: dict) -> HyperBandBracket:
    # Built from its saved numbers, not through __init__, whose arguments it does not keep.
    bracket = HyperBandBracket.__new__(HyperBandBracket)
    for key, value in state["numbers"].items():
        setattr(bracket, key, value)
    bracket._live_trials = dict(state["live"])
    bracket._all_trials = list(state["all"])
    bracket.trials_to_unpause = set(state["unpause"])
    return bracket


def _relink(bracket: HyperBandBracket, trial: Trial) -> None:
    """Puts ``trial`` where its id stood, in the same order (the halving breaks ties by it)."""
    tid = trial.trial_id
    bracket._live_trials = {trial if k == tid else k: r for k, r in bracket._live_trials.items()}
    bracket._all_trials = [trial if t == tid else t for t in bracket._all_trials]
    if tid in bracket.trials_to_unpause:
        bracket.trials_to_unpause.discard(tid)
        bracket.trials_to_unpause.add(trial)


class ResumableASHA(_StopsCarriedOver, _ASHARungs):
    """ASHA whose rungs survive ``--resume``."""


class ResumableHyperBand(_StopsCarriedOver, _ResumableBrackets, HyperBandScheduler):
    """HyperBand whose brackets survive ``--resume``."""


class ResumableHyperBandForBOHB(_StopsCarriedOver, _ResumableBrackets, HyperBandForBOHB):
    """BOHB's HyperBand whose brackets survive ``--resume`` (TuneBOHB, the searcher, is restored
    by Tune)."""


class _MedianResults(MedianStoppingRule):
    """The median stopping rule whose recorded results survive ``--resume``: a trial's best so
    far is compared with the other trials' running means, finished trials' included."""

    def saved_state(self) -> dict:
        keys = (self._time_attr, self._metric)
        return {"results": {_tid(t): [_slim(r, keys) for r in rs]
                            for t, rs in self._results.items()},
                "stopped": sorted(_tid(t) for t in self._stopped_trials),
                "last_pause": {_tid(t): time for t, time in self._last_pause.items()}}

    def load_state(self, state: dict) -> None:
        # Held by id until each trial is added again; the finished trials' results count
        # towards the median either way.
        self._results.update({tid: list(rs) for tid, rs in state["results"].items()})
        self._stopped_trials.update(state["stopped"])
        self._last_pause.update(state["last_pause"])

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        tid = trial.trial_id
        if tid in self._results:
            self._results[trial] = self._results.pop(tid)
        if tid in self._last_pause:
            self._last_pause[trial] = self._last_pause.pop(tid)
        if tid in self._stopped_trials:
            self._stopped_trials.discard(tid)
            self._stopped_trials.add(trial)


class ResumableMedian(_StopsCarriedOver, _MedianResults):
    """The median stopping rule whose recorded results survive ``--resume``."""
