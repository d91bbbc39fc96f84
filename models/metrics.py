"""Classification metrics. CoLA is always reported with MCC beside accuracy."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import matthews_corrcoef


def classification_metrics(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    labels, preds = np.asarray(labels), np.asarray(preds)
    return {
        "accuracy": float((labels == preds).mean()) if len(labels) else float("nan"),
        # sklearn returns 0.0 when predictions are constant (the majority-class baseline).
        "mcc": float(matthews_corrcoef(labels, preds)) if len(labels) else float("nan"),
    }
