"""CoLA classification pieces shared by the LoRA and distillation studies: which split trains
and which is scored at each stage, and the evaluator (loss, accuracy, MCC per split)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.data.batching import classification_batches, length_sorted
from models.data.cola import ColaData
from models.loop import autocast, to_device
from models.metrics import classification_metrics, probability_metrics


# What a sweep may rank trials on besides MCC (best-so-far of each is reported): continuous
# scores that differ between two trials which both predict the majority class.
SWEEP_TRACK = {"val_loss": "min", "val_accuracy": "max", "val_soft_mcc": "max", "val_auc": "max"}


def stage_track(stage: str) -> dict | None:
    return SWEEP_TRACK if stage == "sweep" else None


def stage_splits(data: ColaData, stage: str) -> tuple[str, dict[str, str], str]:
    """-> (training split, {metric prefix: split}, metric to track).

    Sweep trials train on `fit` and are scored on the held-out `select` slice of the training
    set; retrains train on the whole training set and are reported on GLUE dev (also split
    into in-domain and out-of-domain when known). Dev never picks hyperparameters."""
    if stage == "sweep":
        return "fit", {"val": "select"}, "val_mcc"
    evals = {"dev": "dev"}
    if data.dev_domain is not None:
        evals.update({"dev_in": "dev_in", "dev_out": "dev_out"})
    return "train", evals, "dev_mcc"


def make_evaluator(data: ColaData, evals: dict[str, str], *,
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
