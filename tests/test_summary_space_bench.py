"""bench/summary_space_coverage.py: its arithmetic, and one real run on a tiny GPT-2 whose
untuned reference is checked against configurations that cannot move the model."""
import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from summary_space_coverage import best_loss, learned  # noqa: E402


def test_learned_counts_an_epoch_below_the_reference_from_then_on():
    rows = [{"epoch": 1, "val_loss": 3.1}, {"epoch": 2, "val_loss": 2.9},
            {"epoch": 3, "val_loss": 3.2}]
    assert learned(rows, 3, 3.0) == [False, True, True]  # stays counted once below
    assert learned(rows, 3, 2.8) == [False, False, False]
    assert learned([{"epoch": 1, "val_loss": math.nan}], 2, 3.0) == [False, False]  # diverged
    assert best_loss(rows + [{"epoch": 4, "val_loss": math.nan}]) == 2.9


def test_bench_on_a_tiny_gpt2(tmp_path):
    """Learning rates ~1e-9: LoRA (B starts at zero) and the last blocks stay the untuned
    model, so their validation loss equals the untuned reference: the bench measured both on
    the same model and articles. The printed shares are those of the CSV's rows."""
    from models.data.cnndm import synthetic_articles
    from models.tiny import build_tiny_gpt2

    arts = synthetic_articles(n=48)
    rows = arts.train + arts.validation + arts.test
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "articles.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "article", "highlights"])
        w.writerows([i, a, h] for i, (a, h) in enumerate(rows))
    model = build_tiny_gpt2(tmp_path / "model", [t for pair in rows for t in pair] + [" TL;DR:"])
    out = tmp_path / "rows.csv"
    cmd = [sys.executable, str(REPO / "bench" / "summary_space_coverage.py"), "--model", model,
           "--data-dir", str(data), "--samples", "2", "--workers", "1", "--epochs", "2",
           "--max-source-tokens", "48", "--max-target-tokens", "16", "--batch-size", "4",
           "--space", "learning_rate=1e-9:2e-9", "n_last_layers=1,2", "--csv", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    untuned = float(re.search(r"untuned model: val_loss ([\d.]+) on (\d+) validation", r.stdout)[1])
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert {(t["method"], t["epoch"]) for t in table} == {
        (m, e) for m in ("prompt", "lora", "last_layers") for e in ("1", "2")}
    assert len(table) == 12 and all(float(t["untuned_val_loss"]) == pytest.approx(untuned, abs=1e-4)
                                    for t in table)
    for t in table:
        if t["method"] != "prompt":  # a soft prompt changes the input even untrained
            assert float(t["val_loss"]) == pytest.approx(untuned, abs=2e-3), t
    last = r.stdout.strip().splitlines()[-1]
    for method, key in (("prompt", "prompt"), ("lora", "lora"), ("last-layers", "last_layers")):
        mine = [t for t in table if t["method"] == key and t["epoch"] == "1"]
        share = sum(float(t["val_loss"]) < float(t["untuned_val_loss"]) for t in mine) / len(mine)
        assert f"{method} {share:.2f} of n=2" in last, last
