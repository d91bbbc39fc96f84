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
import time

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.redact import real_optuna_url, redact_url, register_optuna_url


class SafeRDBStorage(RDBStorage):
    """Optuna's RDB storage whose pickled state (Tune pickles the searcher, with its study and
    storage, into ``searcher-state-*.pkl`` and ``tuner.pkl``) holds the redacted URL only;
    unpickled, it takes the real URL from ``search.redact`` (the flag given again). Opening
    it survives another sweep creating an empty database's tables at the same moment."""

    def __init__(self, url: str, **kwargs):
        register_optuna_url(url)
        for attempt in range(SCHEMA_TRIES):
            try:
                super().__init__(url, **kwargs)
                return
            except Exception as e:  # noqa: BLE001  (only the race below is retried)
                if attempt == SCHEMA_TRIES - 1 or not _schema_race(e):
                    raise
                if getattr(self, "engine", None) is not None:
                    self.engine.dispose()
                time.sleep(0.2 * (attempt + 1))

    def __getstate__(self):
        state = super().__getstate__()
        state["url"] = redact_url(self.url)
        return state

    def __setstate__(self, state):
        super().__setstate__({**state, "url": real_optuna_url(state["url"])})


SCHEMA_TRIES = 5


def _schema_race(e: Exception) -> bool:
    """Two sweeps started at once on an empty database both create Optuna's tables: the
    database serializes the two CREATEs on its catalog and the later one fails with a
    duplicate key (PostgreSQL) or "already exists" once the first commits. Optuna's
    ``create_all`` checks what exists first, so trying again after the other's commit
    creates only what is still missing (nothing), and inserts no second version row."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    text = str(getattr(e, "orig", e)).lower()
    return (isinstance(e, (IntegrityError, ProgrammingError, OperationalError))
            and ("already exists" in text or "duplicate key" in text))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class PrunedAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._steps: dict[str, set] = {}  # epochs already reported, per trial
        # Each trial's latest result: HyperBand stops a paused trial without a new one.
        self._last: dict[str, dict] = {}

    @property
    def _objectives(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    def _report(self, trial_id: str, result: dict) -> None:
        if result:
            self._last[trial_id] = {k: result.get(k) for k in (*self._objectives, "last_epoch",
                                                                "failure")}
        if isinstance(self.metric, list):
            return  # Optuna keeps no intermediate values for several objectives
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

    def suggest(self, trial_id: str):
        fresh = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if fresh and trial_id in self._ot_trials:
            # Ties the study's trial to Tune's: after a hard kill, a trial asked (and perhaps
            # finished) after Tune's last snapshot is one no Tune trial owns (fail_orphans).
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials and trial_id in self._ot_trials:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._report(trial_id, result or {})  # the stopping epoch's value
        result = self._last.pop(trial_id, {})
        values = [result.get(m) for m in self._objectives]
        value = values[0] if len(values) == 1 else values
        if error or result.get("failure"):
            state, value = TrialState.FAIL, None
        elif isinstance(self.metric, list):  # no scheduler stops these: finished or failed
            finite = all(_finite(v) for v in values)
            state = TrialState.COMPLETE if finite else TrialState.FAIL
            value = [float(v) for v in values] if finite else None
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


ORPHAN_NOTE = "asked by the searcher after Tune's last snapshot; the driver was killed, Tune never ran it"


def fail_orphans(url: str, study_name: str, tune_ids: set[str]) -> tuple[int, int]:
    """After a finished sweep that was resumed: the study's trials no Tune trial owns were
    asked after Tune's last snapshot before a hard kill of the driver. Those still RUNNING
    will never be told: mark them FAIL (with a note), so that the study shows no trial running
    forever. Those that finished (the trial ran, or was pruned, before the kill) are real
    evaluations and stay, but Tune ran that slot again as a new trial: say so, since the study
    then holds more finished trials than ``trials.csv``. ``tune_ids``: the sweep's trial ids.
    -> (closed, finished but replaced)."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0, 0
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    closed = {t._trial_id for t in running}
    for t in running:
        storage.set_trial_user_attr(t._trial_id, "failed_because", ORPHAN_NOTE)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    # Not replaced: the orphans closed just now (``closed``: the study object may still hold
    # them as read before the writes above) and those an earlier resume of the same sweep
    # closed (FAIL, finished, with the note).
    replaced = [t for t in study.get_trials(deepcopy=False)
                if t.state.is_finished() and t._trial_id not in closed
                and t.user_attrs.get("failed_because") != ORPHAN_NOTE
                and t.user_attrs.get("tune_trial_id") not in (None, *tune_ids)]
    if running:
        print(f"Optuna study {study_name}: {len(running)} trial(s) asked before a hard kill and "
              f"never run marked FAIL ({len(tune_ids)} sweep trials kept)", flush=True)
    if replaced:
        print(f"Optuna study {study_name}: {len(replaced)} trial(s) (numbers "
              f"{', '.join(str(t.number) for t in replaced)}) ran after Tune's last snapshot "
              f"before a hard kill; Tune ran those slots again as new trials, so the study "
              f"holds them beside the {len(tune_ids)} of trials.csv (user attribute "
              f"tune_trial_id names a trial Tune no longer has)", flush=True)
    return len(running), len(replaced)
