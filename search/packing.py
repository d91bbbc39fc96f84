"""``--pack K``: many trials on one shared base model. One engine per sweep (a Ray actor holding
the device and the base, ``models.packed.engine``) trains up to K trials' adapters at once; each
configuration stays its own Tune trial (``models.packed.trial``, a thin client), so searchers,
schedulers, checkpoints, retries, ``--resume``, the tables and the trackers are those of any
sweep. Tune runs no more trials at once than the engine has slots (the sweep's concurrency); a
slot a trial leaves (finished, stopped, failed) is taken by the next trial at the next step.

An engine that dies fails the trials attached to it; the driver starts it again and the trials
resume from their checkpoints like any failed trial. The retrain runs unpacked."""
from __future__ import annotations

import contextlib
import time

from ray import tune

class EngineHost:
    """The engine inside its actor: the device Ray gave it (a GPU, else the CPU, with the
    sweep's CPU threads)."""

    def __init__(self, *, model_dir: str, data, capacity: int, max_rank: int, target_modules,
                 threads: int, method, compile: bool = False, max_batch: int | None = None):
        import ray
        import torch

        from models.packed.engine import PackedEngine

        torch.set_num_threads(max(1, threads))
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.engine = PackedEngine(model_dir=model_dir, data=data, capacity=capacity,
                                   max_rank=max_rank, target_modules=target_modules,
                                   device=device, method=method, compile=compile,
                                   max_batch=max_batch)

    def ready(self) -> bool:
        return True

    def attach(self, cfg, state=None, owner=None):
        return self.engine.attach(cfg, state, owner=owner)

    def run_epoch(self, slot, loop):
        return self.engine.run_epoch(slot, loop)

    def release(self, slot) -> None:
        self.engine.release(slot)

    def release_owner(self, owner) -> None:
        self.engine.release_owner(owner)

    def describe(self, slot) -> dict:
        return self.engine.describe(slot)


# --pack auto probes K = 1, 2, 4, ... up to this many (and the sweep's trials, if fewer).
AUTO_MAX = 64


def heaviest_config(plan):
    """The sweep's configuration to time: every numeric dimension at the top of its range (the
    largest rank and batch), the rest as fixed or the config's default."""
    cls = plan.study.config_cls
    fields = cls.field_names()
    values = {k: v for k, v in plan.fixed.items() if k in fields}
    for name, dim in plan.space.items():
        edges = [e for e in dim.edges() if isinstance(e, (int, float))]
        if name in fields and edges:
            values[name] = max(edges)
    return cls(**values)


def probe_slots(plan, data, most: int, model_dir: str) -> tuple[int, list[dict]]:
    """``--pack auto``: the knee of the packed throughput curve, timed on the engine's device
    for at most ``most`` slots (what memory allows) -> (K, the curve)."""
    from models.packed.probe import knee, probe_in_child

    device = "cuda" if plan.gpus_per_trial else "cpu"
    cfg = heaviest_config(plan)
    adapter = plan.study.packed.plan_args(cfg)
    print(f"--pack auto: timing packed steps on the {'GPU' if device == 'cuda' else 'CPU'} "
          f"(K up to {most}, batch {cfg.batch_size}"
          + "".join(f", {k} {v}" for k, v in adapter.items()) + ")", flush=True)
    curve = probe_in_child(
        threads=plan.total_cpus or 1, model_dir=model_dir, data=data, max_k=most,
        batch_size=cfg.batch_size, method=plan.study.packed, adapter=adapter,
        target_modules=plan.fixed.get("target_modules"), device=device)
    # K=1: packing does not pay in time here (bench/packed_sweep.py measured a CPU sweep
    # slower packed); the trials run unpacked.
    return knee(curve), curve


def packable(study) -> bool:
    """Whether ``study``'s trials can be packed (its registry entry says so)."""
    return study.packable


def engine_name(plan) -> str:
    return f"packed-engine-{plan.name}"


def max_rank(plan) -> int:
    from search.memory import largest

    return largest(plan.space, plan.fixed, "lora_r", 8)


class Engine:
    """The sweep's engine actor, started by the driver and started again (same name, same
    data) when it dies: the trials it failed are retried by Tune and wait for it by name.
    (Ray's own actor restarts would need the data pinned for the actor's whole life.)"""

    def __init__(self, plan, data):
        import ray

        self.plan, self.name = plan, engine_name(plan)
        self.data = ray.put(data)  # once per sweep, held here for every start
        self.host = None
        self.starts = 0

    def start(self, wait_s: float = 60.0) -> None:
        import ray

        from search.memory import largest_batch

        plan = self.plan
        if self.host is not None:  # dead: its name is free once Ray has marked it so
            ray.kill(self.host, no_restart=True)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.host = ray.remote(EngineHost).options(
                    name=self.name, num_cpus=0, num_gpus=1 if plan.gpus_per_trial else 0,
                    memory=plan.engine_memory or None, max_concurrency=plan.pack + 8,
                ).remote(model_dir=plan.fixed["model"], data=self.data, capacity=plan.pack,
                         max_rank=max_rank(plan), target_modules=plan.fixed.get("target_modules"),
                         threads=plan.total_cpus, method=plan.study.packed,
                         compile=bool(plan.fixed.get("compile")),
                         max_batch=largest_batch(plan.study, plan.space, plan.fixed))
                break
            except ray.exceptions.ActorAlreadyExistsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        ray.get(self.host.ready.remote())
        self.starts += 1

    def alive(self) -> bool:
        import ray

        try:
            ray.get(self.host.ready.remote(), timeout=30)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False

    def stop(self) -> None:
        import ray

        if self.host is not None:
            ray.kill(self.host, no_restart=True)
            self.host = None


@contextlib.contextmanager
def engine(plan, data):
    """The sweep's engine while the sweep runs (None when ``plan.pack`` < 2)."""
    if plan.pack < 2:
        yield None
        return
    keeper = Engine(plan, data)
    keeper.start()
    _RUNNING[keeper.name] = keeper
    try:
        yield keeper
    finally:
        _RUNNING.pop(keeper.name, None)
        keeper.stop()


# name -> the Engine the driver runs now: a callback Tune restores (--resume) finds it here.
_RUNNING: dict[str, Engine] = {}


class EngineWatch(tune.Callback):
    """Frees a trial's slot when Tune ends it (a trial stopped while its process waited for an
    epoch, or paused, never gets to release it itself), and starts the engine again when a
    trial failed because it died."""

    def __init__(self, keeper: Engine):
        self.name = keeper.name

    @property
    def keeper(self) -> Engine | None:
        # Tune pickles its callbacks with the experiment: only the name goes in, and the
        # restored callback of a --resume finds the engine this driver started.
        return _RUNNING.get(self.name)

    def _release(self, trial) -> None:
        if self.keeper is not None and self.keeper.host is not None:
            self.keeper.host.release_owner.remote(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial)

    def _restart_if_dead(self) -> bool:
        if self.keeper is None or self.keeper.alive():
            return False
        print("the packed engine died; starting it again (its trials resume from their "
              "checkpoints)", flush=True)
        self.keeper.start()
        return True

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A failure Tune retries: the retry's attach frees what the trial still held (here it
        # could free the slot the retry has just taken).
        self._restart_if_dead()

    def on_trial_error(self, iteration, trials, trial, **info):
        # Tune gave up on the trial: nothing of it comes back for its slot.
        if not self._restart_if_dead():
            self._release(trial)
