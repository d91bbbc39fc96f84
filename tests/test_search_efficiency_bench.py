"""The search-efficiency bench's arithmetic: best-so-far curves over repeats and the share of
the budget at which a curve reaches a target (the sweeps themselves are real; this checks
what is computed from their rows)."""
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from search_efficiency import curves, early_signal, share_to_reach  # noqa: E402


def rows(searcher, scheduler, seed, values):
    best, out = -math.inf, []
    for i, v in enumerate(values, start=1):
        best = max(best, v)
        out.append({"searcher": searcher, "scheduler": scheduler, "seed": seed,
                    "trial_epochs": i, "trial_id": f"t{i}", "epoch": 1, "val_mcc": v,
                    "best_so_far": best})
    return out


def test_curves_and_share():
    runs = pd.DataFrame(rows("random", "none", 0, [0.0, 0.1, 0.1, 0.2])
                        + rows("random", "none", 1, [0.0, 0.0, 0.3, 0.3])
                        + rows("tpe", "asha", 0, [0.2, 0.3])  # cut short: keeps its last value
                        + rows("tpe", "asha", 1, [0.1, 0.1, 0.4, 0.4]))
    c = curves(runs)
    ref = c[("random", "none")]
    assert list(ref["mean"]) == pytest.approx([0.0, 0.05, 0.2, 0.25])
    tpe = c[("tpe", "asha")]
    assert list(tpe["mean"]) == pytest.approx([0.15, 0.2, 0.35, 0.35]) and list(tpe["n"]) == [2, 2, 2, 2]
    target = ref["mean"].iloc[-1] - 0.01  # 0.24
    assert share_to_reach(tpe, target, 4) == 0.75
    assert share_to_reach(ref, target, 4) == 1.0
    assert share_to_reach(ref, 0.9, 4) == math.inf


def test_early_signal_ranks_each_epoch_against_the_final_best():
    """Random search's full trials only: epoch 1's AUC orders the trials as their best MCC
    does (+1), epoch 1's MCC in reverse (-1); a trial cut short by a scheduler is left out."""
    trials = {"a": ([0.6, 0.7], [0.1, 0.05]), "b": ([0.7, 0.8], [0.05, 0.2]),
              "c": ([0.8, 0.9], [0.0, 0.4])}  # best MCC: a 0.1 < b 0.2 < c 0.4
    out = []
    for tid, (aucs, mccs) in trials.items():
        for e, (auc, mcc) in enumerate(zip(aucs, mccs), start=1):
            out.append({"searcher": "random", "scheduler": "none", "seed": 0, "trial_id": tid,
                        "epoch": e, "val_auc": auc, "val_mcc": mcc})
    out.append({"searcher": "random", "scheduler": "none", "seed": 0, "trial_id": "cut",
                "epoch": 1, "val_auc": 0.99, "val_mcc": 0.9})
    out.append({"searcher": "tpe", "scheduler": "asha", "seed": 0, "trial_id": "a",
                "epoch": 1, "val_auc": 0.1, "val_mcc": 0.9})
    signal = early_signal(pd.DataFrame(out), max_epochs=2)
    assert list(signal["epoch"]) == [1] and list(signal["n"]) == [3]
    assert signal["auc"].iloc[0] == pytest.approx(1.0)
    assert signal["mcc"].iloc[0] == pytest.approx(-1.0)
