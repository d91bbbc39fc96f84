"""The former home of ASHA's resumable rungs, kept so that sweeps started before
``search.resumable_schedulers`` still resume: Tune's pickled state (``tuner.pkl``) names
``search.resumable_asha.ResumableASHA`` and ``RungState``, and the saved callback state holds
the rungs under ``"asha"``."""
from __future__ import annotations

from search.resumable_schedulers import ResumableASHA, SchedulerState

__all__ = ["ResumableASHA", "RungState"]


class RungState(SchedulerState):
    """``SchedulerState`` as the former module pickled it."""

    def set_state(self, state: dict) -> None:
        self.scheduler.load_state(state["scheduler"] if "scheduler" in state else state["asha"])
