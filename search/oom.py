"""A trial killed by Ray's memory monitor fails alone; the sweep goes on.

Ray's memory monitor kills a worker when the node runs low on memory, and the trial's pending
call then raises ``ray.exceptions.OutOfMemoryError``. Ray Tune's actor manager (Ray 2.60,
``ray/air/execution/_internal/actor_manager.py``, ``_actor_task_failed``) handles only
``RayActorError`` and ``RayTaskError`` there and raises ``RuntimeError("Caught unexpected
exception: ...")`` for anything else, which ends ``Tuner.fit()`` and with it the whole sweep
(tables never written). The worker is dead either way, so the error is passed on as what it
is, an actor death, carrying the memory monitor's message: Tune then fails that trial (and
retries it from its checkpoint up to ``--max-failures``) while the others run on, and the
message reaches the trial's ``error.txt`` and the tables' ``failure`` column.

Nothing else in Ray or Tune handles this; the patch is installed once per driver process by
``install()`` and touches only that one branch.
"""
from __future__ import annotations

MEMORY_KILLED = "killed by Ray's memory monitor (the node ran low on memory)"


def install() -> None:
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.exceptions import OutOfMemoryError, RayActorError

    original = RayActorManager._actor_task_failed
    if getattr(original, "_passes_oom_on", False):
        return

    class TrialMemoryKilled(RayActorError):
        """The worker of a trial was killed for memory: an actor death with the reason."""

    def _actor_task_failed(self, tracked_actor_task, exception):
        if isinstance(exception, OutOfMemoryError) and not isinstance(exception, RayActorError):
            exception = TrialMemoryKilled(error_msg=f"{MEMORY_KILLED}: {exception}")
        return original(self, tracked_actor_task, exception)

    _actor_task_failed._passes_oom_on = True
    RayActorManager._actor_task_failed = _actor_task_failed
