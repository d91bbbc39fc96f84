"""bench/packed_throughput.py runs to its last line on a tiny GPT-2: a row for K = 2 with the packed
and separate throughputs, their ratio as printed, the plan's estimate, and the last line naming
the largest K measured both ways."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench" / "packed_throughput.py"


def test_packed_throughput_bench_on_a_tiny_model(tiny_model):
    r = subprocess.run([sys.executable, str(BENCH), "--model", tiny_model, "--ks", "2",
                        "--steps", "1", "--batch-size", "4"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    rows = {}
    for line in lines:
        fields = line.split()
        if fields and fields[0].isdigit():
            rows[int(fields[0])] = [float(f) for f in fields[1:]]
    assert set(rows) == {2}
    for k, (packed, separate, ratio, ops, solo_ops, packed_mb, est_mb, sep_mb) in rows.items():
        assert packed > 0 and separate > 0 and ops > 0 and solo_ops > 0
        # samples/s printed to 1 place, the ratio to 2: what rounding leaves between them
        slack = packed / separate * (0.05 / packed + 0.05 / separate) + 0.006
        assert ratio == pytest.approx(packed / separate, abs=slack)
        assert packed_mb > 0 and est_mb > 0 and sep_mb > 0
    assert re.fullmatch(r"packed/separate samples/s at K=2: \d+\.\d\d", lines[-1])
    assert float(lines[-1].rsplit(" ", 1)[1]) == pytest.approx(rows[2][2], abs=0.006)
