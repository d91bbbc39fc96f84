"""The packed engine: one device, one frozen base, up to ``capacity`` CoLA adapter trials of one
method (LoRA, DoRA, IA3: a ``PackedMethod``) training at once, each in its own slot and at its
own epoch. Ray-free; ``search/packing.py`` runs it as a Ray actor that the sweep's trials
attach to.

Threads: each trial calls ``run_epoch`` from its own thread and waits there; one stepping
thread does all the torch work (packed steps for every slot in an epoch; a slot whose batches
ran out is evaluated, its epoch closed as the shared loop closes one, and handed back). A slot
waits between its epochs (its trial reports and checkpoints) while the others train on."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import torch

from models.classify import make_evaluator, stage_splits, stage_track
from models.cola_adapter import epoch_batches
from models.data.classification import ClassificationData
from models.data.cola import SCORE
from models.errors import ConfigError
from models.loop import LoopState, close_epoch
from models.metrics import confusion_metrics
from models.packed.lora import LORA
from models.packed.model import PackedMethod, PackedModel
from models.packed.static import StaticShapes
from models.packed.trainer import PackedTrainer, SlotPlan
from models.peak_memory import PeakMemory


@dataclass
class _Job:
    loop: LoopState
    result: tuple | None = None
    error: BaseException | None = None
    released: bool = False


class PackedEngine:
    """``capacity`` slots of ``method`` (the study's ``Study.packed``; LoRA's and DoRA's ranks
    up to ``max_rank``) on the classifier at ``model_dir``, on the modules ``target_modules``
    names (None: the method's default), training on ``data`` at ``stage`` ("sweep": fit,
    scored on select)."""

    def __init__(self, *, model_dir: str, data: ClassificationData, capacity: int,
                 max_rank: int, target_modules, device="cpu", stage: str = "sweep",
                 method: PackedMethod = LORA, compile: bool = False,
                 max_batch: int | None = None):
        from models.hf import load_sequence_classifier

        self.device = torch.device(device)
        self.model_dir, self.capacity, self.method = model_dir, capacity, method
        self.target_modules = _names(target_modules)
        memory = PeakMemory(self.device)
        base = load_sequence_classifier(model_dir, num_labels=2, pad_token_id=data.pad_token_id)
        self.model = PackedModel(base, method=method, capacity=capacity,
                                 target_modules=target_modules,
                                 max_rank=max_rank).to(self.device)
        train_split, evals, self.metric = stage_splits(data, stage, score=SCORE)
        self.track = stage_track(stage)
        self.ids, self.labels = data.split(train_split)
        # --compile: static shapes (every slot max_batch rows, a few length buckets), one
        # compiled graph per bucket
        self.compiled = compile
        self.static = (StaticShapes.for_lengths([len(x) for x in self.ids], rows=max_batch)
                       if compile else None)
        self.trainer = PackedTrainer(self.model, device=self.device, pad_id=data.pad_token_id,
                                     static=self.static, compile=compile)
        self.pad_id = data.pad_token_id
        self._eval_slot = 0
        self.evaluate = make_evaluator(
            data, evals, device=self.device,
            forward=lambda model, batch: self.trainer.forward_slot(self._eval_slot)(model, batch))
        self.memory = memory
        self.base_mb = memory.current_mb()
        self.cfgs: dict[int, object] = {}
        self.owners: dict[int, str | None] = {}
        self.jobs: dict[int, _Job] = {}
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._run, name="packed-steps", daemon=True).start()

    # -- what trials call (from their own threads) --

    def check(self, cfg) -> None:
        """A configuration this engine can train, else ConfigError naming the field (a
        TypeError for a configuration of another method's study: the engine was started with
        the wrong ``method``)."""
        from models.registry import STUDIES

        wanted = {s.packed.name for s in STUDIES.values()
                  if type(cfg) is s.config_cls and s.packed is not None}
        if wanted and self.method.name not in wanted:
            raise TypeError(f"a {type(cfg).__name__} trial packs with {sorted(wanted)}; this "
                            f"engine packs {self.method.name} (start it with the study's "
                            "Study.packed)")
        for name, ok, allowed in (
                ("micro_batch_size", cfg.micro_batch_size == 0, "0 when trials are packed"),
                ("compile", cfg.compile == self.compiled,
                 f"{self.compiled}, as the packed engine's (one compiled step for all slots)"),
                ("batch_size", self.static is None or cfg.batch_size <= self.static.rows,
                 f"<= {self.static.rows if self.static else 0}, the rows a slot has in the "
                 "engine's static shapes"),
                ("target_modules",
                 _names(getattr(cfg, "target_modules", None)) == self.target_modules,
                 f"{self.target_modules}, as the packed engine's (one set of targets per "
                 "shared base)")):
            if not ok:
                raise ConfigError(name, getattr(cfg, name), allowed)
        self.method.check(cfg, self.model.options)

    def attach(self, cfg, state: dict | None = None, *, owner: str | None = None,
               wait: bool = True) -> int | None:
        """A slot for ``cfg`` (fresh, or ``state`` from an earlier ``run_epoch``), waiting for
        one to be released when every slot is taken (``wait=False``: None then). ``owner``:
        "<trial id>:<attempt>"; a slot an earlier attempt of the same trial still holds (its
        process was stopped mid-epoch, or paused, without releasing it) is released first."""
        self.check(cfg)
        if owner is not None:
            self.release_owner(owner.split(":", 1)[0])
        with self.cond:
            while not self.trainer.free_slots():
                if not wait or self.closed:
                    return None
                self.cond.wait()
            steps = -(-len(self.ids) // cfg.batch_size) * cfg.max_epochs
            plan = SlotPlan(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            warmup_ratio=cfg.warmup_ratio, total_steps=steps, seed=cfg.seed,
                            **self.method.plan_args(cfg))
            slot = self.trainer.attach(plan, state)
            self.cfgs[slot] = cfg
            self.owners[slot] = owner
            return slot

    def run_epoch(self, slot: int, loop: LoopState) -> tuple[dict, dict, LoopState] | None:
        """Train ``slot`` for its next epoch (``loop.epoch + 1``) beside the other slots,
        evaluate it and close the epoch: -> (metrics, the slot's state, the loop state); None
        when the slot was released meanwhile (the trial was ended)."""
        cfg = self.cfgs[slot]
        epoch = loop.epoch + 1
        batches = epoch_batches(cfg, self.ids, self.labels, pad_id=self.pad_id, epoch=epoch)
        job = _Job(loop)
        with self.cond:
            self.trainer.start_epoch(slot, batches)
            self.jobs[slot] = job
            self.cond.notify_all()
            while job.result is None and job.error is None and not job.released:
                self.cond.wait()
        if job.error is not None:
            raise job.error
        return job.result  # None when released

    def release(self, slot: int) -> None:
        with self.cond:
            self.trainer.release(slot)
            self.cfgs.pop(slot, None)
            self.owners.pop(slot, None)
            job = self.jobs.pop(slot, None)
            if job is not None and job.result is None:
                # Tune ended the trial (its scheduler's stop of the previous epoch's result
                # arrived while its process had gone on to the next epoch): nothing to report.
                job.released = True
            self.cond.notify_all()

    def release_owner(self, owner: str) -> None:
        """Releases the slot ``owner`` holds, if any: an attempt ("<trial id>:<attempt>", as
        its process ends) or every attempt of a trial ("<trial id>", as the sweep ends it). An
        attempt's late release never frees the slot of the next attempt of its trial."""
        with self.cond:  # matched and released at once: two releases of one trial (its own,
            # and the sweep's) must not free the slot a third trial took in between
            for slot in [k for k, o in self.owners.items()
                         if o is not None and (o == owner or o.startswith(owner + ":"))]:
                self.release(slot)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def describe(self, slot: int) -> dict:
        """What a trial's rows record of its slot: its trainable parameters at its own size
        (as its solo trial counts them: e.g. LoRA pairs at its rank, and the head), the base's,
        and the engine."""
        trainable = self.model.trainable(self.trainer.slots[slot].plan)
        base = sum(p.numel() for p in self.model.classifier.parameters() if not p.requires_grad)
        return {"trainable_params": int(trainable), "total_params": int(base + trainable),
                "capacity": self.capacity, "slot": slot, "device": str(self.device)}

    # -- the stepping thread --

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self.jobs:
                    self.cond.wait()
                if self.closed:
                    return
                try:
                    ended = self.trainer.step()
                    for slot in ended:
                        self._finish(slot)
                except BaseException as e:  # noqa: BLE001  (every waiting trial hears of it)
                    for job in self.jobs.values():
                        job.error = e
                    self.jobs.clear()
                self.cond.notify_all()

    def _finish(self, slot: int) -> None:
        job = self.jobs.pop(slot)
        stats = self.trainer.epoch_stats(slot)
        loop, cfg = job.loop, self.cfgs[slot]
        epoch = loop.epoch + 1
        train_loss = stats["train_loss"]
        t0 = time.perf_counter()
        if not math.isfinite(train_loss):
            loop.failure = f"non-finite training loss ({train_loss}) in epoch {epoch}"
            metrics = {self.metric: float("nan"), "failure": loop.failure}
        else:
            self._eval_slot = slot
            self.model.eval()
            metrics = dict(self.evaluate(self.model))
            metrics.update(confusion_metrics(stats["counts"]))
        close_epoch(loop, metrics, epoch=epoch, train_loss=train_loss,
                    train_s=stats["train_s"], epoch_s=stats["train_s"] + time.perf_counter() - t0,
                    peak=self.memory.peak_mb(), base_mb=self.base_mb, best_metric=self.metric,
                    mode="max", patience=None, max_epochs=cfg.max_epochs, track=self.track)
        job.result = (metrics, self.trainer.export(slot), loop)


def _names(target_modules) -> tuple | None:
    """target_modules as a config holds it (a tuple of names, or None), whatever it came as."""
    if not target_modules:
        return None
    return (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
