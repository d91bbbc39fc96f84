"""The search-efficiency bench's arithmetic: best-so-far curves over repeats and the share of
the budget at which a curve reaches a target (the sweeps themselves are real; this checks
what is computed from their rows)."""
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from search_efficiency import curves, share_to_reach  # noqa: E402


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
