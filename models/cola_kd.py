"""Study 2: distil a fine-tuned CoLA teacher into a GRU student (and the same student trained
from scratch, ``kd_fraction`` = 1, as the baseline).

Owns the study's config, its data (CoLA token ids + the teacher's logits, computed once per
sweep) and its ``setup``: student building and the distillation loss."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.data.batching import classification_batches
from models.classify import make_evaluator, stage_splits, stage_track
from models.data.classification import ClassificationData
from models.data.cola import SCORE
from models.config import TrialConfig, require
from models.hf import count_parameters
from models.kd_loss import kd_loss
from models.loop import TrialSetup
from models.metrics import confusion_counts, confusion_metrics
from models.student import GRUStudent

WEIGHTS = "student.safetensors"
STUDENT_CONFIG = "student_config.json"


@dataclass(frozen=True)
class ColaKDConfig(TrialConfig):
    learning_rate: float = 2e-3
    batch_size: int = 64
    kd_fraction: float = 0.5
    kd_temperature: float = 2.0
    embed_dim: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.1

    def validate(self) -> None:
        super().validate()
        require(0 <= self.kd_fraction <= 1, "kd_fraction", self.kd_fraction, "must be in [0, 1]")
        require(self.kd_temperature > 0, "kd_temperature", self.kd_temperature, "must be > 0")
        for name in ("embed_dim", "hidden_size", "num_layers"):
            v = getattr(self, name)
            require(isinstance(v, int) and v >= 1, name, v, "must be an integer >= 1")
        require(isinstance(self.bidirectional, bool), "bidirectional", self.bidirectional,
                "true or false")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")

    def student_kwargs(self) -> dict:
        return {"embed_dim": self.embed_dim, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bidirectional": self.bidirectional,
                "dropout": self.dropout}


@dataclass
class KDData:
    """What every trial gets through tune.with_parameters: token ids and the teacher's logits
    (row-aligned with the training set and with dev). The teacher model itself never ships."""

    cola: ClassificationData
    teacher_train: np.ndarray  # [N_train, 2] float32
    teacher_dev: np.ndarray  # [N_dev, 2] float32
    vocab_size: int
    teacher: dict = field(default_factory=dict)  # description and its own metrics

    def teacher_logits(self, split: str) -> np.ndarray:
        source = self.teacher_dev if split.startswith("dev") else self.teacher_train
        return source[self.cola.indices(split)]


def load_student(d: str | Path) -> GRUStudent:
    """A student saved by a trial checkpoint or a retrain."""
    from safetensors.torch import load_file

    spec = json.loads((Path(d) / STUDENT_CONFIG).read_text())
    model = GRUStudent(**spec)
    model.load_state_dict(load_file(str(Path(d) / WEIGHTS)))
    return model.eval()


def _forward(model, batch):
    return model(batch["input_ids"], batch["attention_mask"])


def setup(cfg: ColaKDConfig, data: KDData, device) -> TrialSetup:
    from safetensors.torch import load_file, save_file

    cola = data.cola
    spec = {"vocab_size": data.vocab_size, "pad_token_id": cola.pad_token_id, **cfg.student_kwargs()}
    model = GRUStudent(**spec).to(device)
    train_split, evals, metric = stage_splits(cola, cfg.stage, score=SCORE)
    ids, labels = cola.split(train_split)
    soft = data.teacher_logits(train_split)

    def train_batches(epoch: int):
        return classification_batches(ids, labels, batch_size=cfg.batch_size,
                                      pad_id=cola.pad_token_id, shuffle_seed=cfg.seed * 1000 + epoch,
                                      group_by_length=cfg.group_by_length,
                                      extra={"teacher_logits": soft})

    def loss_fn(m, batch):
        logits = _forward(m, batch)
        loss = kd_loss(logits, batch["teacher_logits"], batch["labels"],
                       fraction=cfg.kd_fraction, temperature=cfg.kd_temperature)
        return loss, confusion_counts(logits, batch["labels"])

    def save(path: str):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(path) / WEIGHTS))
        (Path(path) / STUDENT_CONFIG).write_text(json.dumps(spec))

    def load(path: str):
        model.load_state_dict(load_file(str(Path(path) / WEIGHTS)))

    return TrialSetup(
        model=model, loss_fn=loss_fn, train_batches=train_batches,
        steps_per_epoch=-(-len(ids) // cfg.batch_size),
        evaluate=make_evaluator(cola, evals, forward=_forward, device=device,
                                reference=lambda s: data.teacher_logits(s).argmax(-1)),
        best_metric=metric, mode="max", save_weights=save, load_weights=load,
        info=count_parameters(model), track=stage_track(cfg.stage),
        train_stats=confusion_metrics,
    )
