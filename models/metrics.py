"""Classification metrics. CoLA is always reported with MCC beside accuracy.

``probability_metrics`` adds two scores computed from the predicted probability of class 1
rather than the argmax: they still separate two models that both predict the majority class
for every sentence (where MCC is exactly 0 for both), so an early rung is not a tie."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import matthews_corrcoef, roc_auc_score


def classification_metrics(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    labels, preds = np.asarray(labels), np.asarray(preds)
    return {
        "accuracy": float((labels == preds).mean()) if len(labels) else float("nan"),
        # sklearn returns 0.0 when predictions are constant (the majority-class baseline).
        "mcc": float(matthews_corrcoef(labels, preds)) if len(labels) else float("nan"),
    }


def soft_mcc(labels: np.ndarray, p1: np.ndarray) -> float:
    """MCC of the expected confusion matrix, each sentence counted as p(1) a positive and
    1 - p(1) a negative prediction. 0 for any constant p(1) (no discrimination), 1 only for
    confident, correct predictions; continuous in the probabilities."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(p1, dtype=np.float64)
    tp, fp = float((p * y).sum()), float((p * (1 - y)).sum())
    fn, tn = float(((1 - p) * y).sum()), float(((1 - p) * (1 - y)).sum())
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom > 0 else 0.0


def probability_metrics(labels: np.ndarray, p1: np.ndarray) -> dict[str, float]:
    """``soft_mcc`` and ``auc`` (ROC AUC of p(1); 0.5 when the split has one class)."""
    labels = np.asarray(labels)
    auc = (float(roc_auc_score(labels, p1)) if len(np.unique(labels)) == 2 else 0.5)
    return {"soft_mcc": soft_mcc(labels, p1), "auc": auc}


def confusion_counts(logits, labels) -> dict:
    """A training batch's confusion counts as device tensors (summed by the loop; no host
    sync per step): tp, fp, tn, fn of the argmax prediction, label 1 positive."""
    pred = logits.detach().argmax(-1)
    pos, yes = pred == 1, labels == 1
    return {"tp": (pos & yes).sum(), "fp": (pos & ~yes).sum(),
            "tn": (~pos & ~yes).sum(), "fn": (~pos & yes).sum()}


def confusion_metrics(c: dict) -> dict[str, float]:
    """train_accuracy and train_mcc from summed confusion counts."""
    tp, fp, tn, fn = (float(c.get(k, 0.0)) for k in ("tp", "fp", "tn", "fn"))
    n = tp + fp + tn + fn
    denom = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return {"train_accuracy": (tp + tn) / n if n else float("nan"),
            "train_mcc": (tp * tn - fp * fn) / denom if denom else 0.0}
