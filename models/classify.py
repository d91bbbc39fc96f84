"""Classification pieces every classification study shares (CoLA's LoRA, IA3, DoRA and
distillation): which split trains and which is scored at each stage, and the evaluator (loss,
accuracy, MCC, soft MCC and AUC per split)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.data.batching import classification_batches, length_sorted
from models.data.classification import ClassificationData
from models.loop import autocast, to_device
from models.metrics import classification_metrics, probability_metrics


# What a sweep may rank trials on besides MCC (best-so-far of each is reported): continuous
# scores that differ between two trials which both predict the majority class.
SWEEP_TRACK = {"val_loss": "min", "val_accuracy": "max", "val_soft_mcc": "max", "val_auc": "max"}


def stage_track(stage: str) -> dict | None:
    return SWEEP_TRACK if stage == "sweep" else None


def stage_splits(data: ClassificationData, stage: str, *, score: str
                 ) -> tuple[str, dict[str, str], str]:
    """-> (training split, {metric prefix: split}, metric to track). ``score``: the study's
    measure (a key of the evaluator's per-split metrics, e.g. "mcc").

    Sweep trials train on `fit` and are scored on the held-out `select` slice of the training
    set; retrains train on the whole training set and are reported on dev (and on each dev
    group, CoLA's in-domain and out-of-domain). Dev never picks hyperparameters."""
    if stage == "sweep":
        return "fit", {"val": "select"}, f"val_{score}"
    return "train", {name: name for name in data.dev_splits()}, f"dev_{score}"


def make_evaluator(data: ClassificationData, evals: dict[str, str], *,
                   forward: Callable[[torch.nn.Module, dict], torch.Tensor],
                   batch_size: int = 256, device="cpu",
                   reference: Callable[[str], np.ndarray] | None = None
                   ) -> Callable[[torch.nn.Module], dict]:
    """``forward(model, batch) -> logits [B, 2]``. Returns evaluate(model) -> flat metrics:
    ``<prefix>_loss``, ``_accuracy``, ``_mcc``, ``_soft_mcc`` and ``_auc`` per split, and
    ``_agreement`` (share of equal
    predictions) when ``reference(split)`` gives another model's predictions (the teacher's).
    Batches are length-sorted (no gradients, so larger than training's) and the logits put
    back in the split's order."""
    cached = {prefix: data.split(split) for prefix, split in evals.items()}
    orders = {prefix: length_sorted(ids) for prefix, (ids, _) in cached.items()}
    refs = {prefix: reference(split) for prefix, split in evals.items()} if reference else {}

    @torch.inference_mode()
    def evaluate(model) -> dict:
        out = {}
        for prefix, (ids, labels) in cached.items():
            logits = []
            order, inverse = orders[prefix]
            for batch in classification_batches(ids, labels, batch_size=batch_size,
                                                pad_id=data.pad_token_id, order=order):
                batch = to_device(batch, device)
                with autocast(device):
                    logits.append(forward(model, batch).float())
            logits = torch.cat(logits)[torch.from_numpy(inverse).to(logits[0].device)]
            y = torch.tensor(labels, device=logits.device)
            out[f"{prefix}_loss"] = F.cross_entropy(logits, y).item()
            preds = logits.argmax(-1).cpu().numpy()
            p1 = logits.softmax(-1)[:, 1].cpu().numpy()
            for k, v in {**classification_metrics(np.asarray(labels), preds),
                         **probability_metrics(np.asarray(labels), p1)}.items():
                out[f"{prefix}_{k}"] = v
            if prefix in refs:
                out[f"{prefix}_agreement"] = float((preds == refs[prefix]).mean())
        return out

    return evaluate
