"""The packed engine: one device, one frozen base, up to ``capacity`` CoLA LoRA trials training
at once, each in its own slot and at its own epoch. Ray-free; ``search/packing.py`` runs it as a
Ray actor that the sweep's trials attach to.

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
from models.packed.layers import PackedLoRA
from models.packed.trainer import PackedTrainer, SlotPlan
from models.peak_memory import PeakMemory


@dataclass
class _Job:
    loop: LoopState
    result: tuple | None = None
    error: BaseException | None = None
    released: bool = False


class PackedEngine:
    """``capacity`` slots of LoRA (ranks up to ``max_rank``) on the classifier at
    ``model_dir``, training on ``data`` at ``stage`` ("sweep": fit, scored on select)."""

    def __init__(self, *, model_dir: str, data: ClassificationData, capacity: int,
                 max_rank: int, target_modules, device="cpu", stage: str = "sweep"):
        from models.hf import load_sequence_classifier
        from models.lora import lora_targets

        self.device = torch.device(device)
        self.model_dir, self.capacity = model_dir, capacity
        memory = PeakMemory(self.device)
        base = load_sequence_classifier(model_dir, num_labels=2, pad_token_id=data.pad_token_id)
        self.targets = lora_targets(base, target_modules)
        self.model = PackedLoRA(base, capacity=capacity, max_rank=max_rank,
                                target_modules=self.targets).to(self.device)
        self.trainer = PackedTrainer(self.model, device=self.device, pad_id=data.pad_token_id)
        train_split, evals, self.metric = stage_splits(data, stage, score=SCORE)
        self.track = stage_track(stage)
        self.ids, self.labels = data.split(train_split)
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
        """A configuration this engine can train, else ConfigError naming the field."""
        for name, ok, allowed in (
                ("lora_r", 1 <= cfg.lora_r <= self.model.max_rank,
                 f"<= {self.model.max_rank}, the packed engine's largest rank"),
                ("micro_batch_size", cfg.micro_batch_size == 0, "0 when trials are packed"),
                ("compile", not cfg.compile, "false when trials are packed")):
            if not ok:
                raise ConfigError(name, getattr(cfg, name), allowed)

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
            plan = SlotPlan(rank=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            warmup_ratio=cfg.warmup_ratio, total_steps=steps, seed=cfg.seed)
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
        """What a trial's rows record of its slot: its trainable parameters at its own rank
        (as a solo trial counts them: LoRA pairs and the head), the base's, and the engine."""
        rank = self.trainer.slots[slot].plan.rank
        head = self.model.head
        trainable = (sum(rank * (layer.in_features + layer.out_features)
                         for layer in self.model.layers.values())
                     + head.in_features * head.out_features
                     + (head.out_features if head.has_bias else 0))
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
