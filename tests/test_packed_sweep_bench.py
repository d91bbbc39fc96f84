"""bench/packed_sweep.py: its ASHA replay decides as Ray's ASHA does in the order given (fast,
no sweep); and, run once with ``--smoke-test`` (two real sweeps of the CLI, slow), every
figure it prints is what the two experiments' tables say, recomputed here from the files."""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_cli, read_table

sys.path.insert(0, str(REPO / "bench"))

import packed_sweep as bench  # noqa: E402

BENCH = REPO / "bench" / "packed_sweep.py"
K, N, EPOCHS = 2, 4, 3  # 2 slots for 4 trials: slots are taken again; ASHA rungs at 1 and 2


def fake_experiment(curves: dict) -> SimpleNamespace:
    rows = [{"trial_id": t, "epoch": e, "m": v} for t, c in curves.items()
            for e, v in enumerate(c, start=1)]
    return SimpleNamespace(epochs=pd.DataFrame(rows), record={
        "search_metric": "m", "search_mode": "max", "searcher": "random",
        "flags": {"max_epochs": EPOCHS, "grace_period": 1, "reduction_factor": 2.0}})


# ASHA (max 3 epochs, grace 1, reduction 2: rungs at epochs 1 and 2) stops a trial under the
# median of those that reached the rung before it. e's metrics end at epoch 1 (its sweep
# stopped it there) while the replay in this order lets it on.
CURVES = {"a": [0.5, 0.6, 0.7], "b": [0.4], "c": [0.6, 0.5, 0.9], "d": [0.45], "e": [0.7]}


def test_replay_decides_as_asha_in_the_order_given():
    exp = fake_experiment(CURVES)
    assert bench.replay_asha(exp, list(CURVES)) == {
        "a": "end", "b": "stop@1", "c": "stop@2", "d": "stop@1", "e": "past@1"}
    # The same metrics in the reverse order: e comes first, and a is now under the median.
    assert bench.replay_asha(exp, list(reversed(CURVES))) == {
        "e": "past@1", "d": "stop@1", "c": "end", "b": "stop@1", "a": "stop@1"}


def test_decisions_agree_or_stay_open():
    assert bench.agree("end", "end") and bench.agree("stop@1", "stop@1")
    assert bench.agree("end", "stop@2") is False
    assert bench.agree("past@2", "stop@1") is False  # stopped at a rung the other passed
    assert bench.agree("past@1", "stop@2") is None and bench.agree("past@1", "end") is None
    assert bench.agree("past@1", "past@1") is None


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packed-sweep-bench")
    r = run_cli(BENCH, ["--smoke-test", "--pack", str(K), "--num-samples", str(N),
                        "--max-epochs", str(EPOCHS), "--grace-period", "1",
                        "--out", str(tmp / "out")], tmp, timeout=850)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout, tmp / "out"


def section(out: str, title: str) -> list[str]:
    """The lines after the one starting ``== title``, up to a blank line or the end."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"== {title}"))
    rest = lines[start + 1:]
    return rest[:rest.index("")] if "" in rest else rest


def tables(out_dir: Path, run: str):
    exp = out_dir / run
    params = list(json.loads((exp / "experiment.json").read_text())["space"])
    return read_table(exp / "trials.csv"), read_table(exp / "epochs.csv"), params


def decision(trial) -> str:
    return (f"stop@{trial['epochs_run']}" if trial["status"] == "stopped" else
            "end" if trial["status"] == "completed" else trial["status"])


def matched_rows(out: str) -> pd.DataFrame:
    lines = section(out, "configurations in both sweeps")
    header, rows = lines[0].split(), []
    for ln in lines[1:]:
        if ln.startswith(("ASHA", "replay", "packed/")):
            break
        rows.append(dict(zip(header, ln.split())))
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_times_best_and_last_line_are_the_experiments(bench_run):
    from results.frames import read_trials, sweep_times

    out, out_dir = bench_run
    times = {ln.rsplit(None, 2)[0].strip(): [float(x) for x in ln.split()[-2:]]
             for ln in section(out, "time (s)")[1:]}
    for i, run in enumerate(bench.RUNS):
        active = sweep_times(read_trials(out_dir / run))["active_s"]
        assert times["active compute"][i] == pytest.approx(active, abs=0.006)
        trials, _, params = tables(out_dir, run)
        assert len(trials) == N
    best = {ln.split()[0]: ln.split()[1:] for ln in section(out, "best configuration")[1:]}
    for i, run in enumerate(bench.RUNS):
        trials, _, params = tables(out_dir, run)
        top = trials.loc[trials["best_val_mcc"].idxmax()]
        assert best["trial_id"][i] == top["trial_id"]
        assert float(best["best_val_mcc"][i]) == pytest.approx(top["best_val_mcc"], abs=1e-6)
    (tu, _, params), (tp, _, _) = tables(out_dir, "unpacked"), tables(out_dir, "packed")
    bu = tu.set_index("trial_id").loc[best["trial_id"][0], params]
    bp = tp.set_index("trial_id").loc[best["trial_id"][1], params]
    same = all(np.isclose(float(a), float(b), rtol=1e-9) for a, b in zip(bu, bp))
    assert f"same configuration: {'yes' if same else 'no'}" in out
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"packed/unpacked wall time: (\d+\.\d\d) \(K=(\d+), n=(\d+) trials each\)",
                     last)
    assert m, last
    wall_u, wall_p = times["command wall clock"]
    assert float(m[1]) == pytest.approx(wall_p / wall_u, abs=0.006)
    assert (int(m[2]), int(m[3])) == (K, N)


@pytest.mark.slow
def test_matched_configurations_and_decisions_are_the_experiments(bench_run):
    out, out_dir = bench_run
    (tu, eu, params), (tp, ep, _) = tables(out_dir, "unpacked"), tables(out_dir, "packed")
    rows = matched_rows(out)
    # --searcher random proposes from its seed alone: both sweeps ran the same configurations.
    assert len(rows) == N and set(rows["id_u"]) == set(tu["trial_id"])
    assert set(rows["id_p"]) == set(tp["trial_id"])
    byu, byp = tu.set_index("trial_id"), tp.set_index("trial_id")
    for r in rows.itertuples():
        u, p = byu.loc[r.id_u], byp.loc[r.id_p]
        assert np.allclose(u[params].astype(float), p[params].astype(float), rtol=1e-9)
        both = eu[eu["trial_id"] == r.id_u].merge(ep[ep["trial_id"] == r.id_p], on="epoch")
        for col in ("val_mcc", "best_val_auc"):
            diff = (both[f"{col}_x"] - both[f"{col}_y"]).abs().max()
            assert float(getattr(r, f"d_{col}")) == pytest.approx(diff, abs=5.1e-5), col
        assert (r.sweep_u, r.sweep_p) == (decision(u), decision(p))
        failed = bool({decision(u), decision(p)} & {"failed", "interrupted"})
        assert r.sweep_same == ("n/a" if failed else
                                "yes" if decision(u) == decision(p) else "no")
        for replay, t in ((r.replay_u, u), (r.replay_p, p)):
            if t["status"] == "failed":
                continue
            # The replay decides only on epochs the sweep ran.
            e = int(replay.split("@")[1]) if "@" in replay else EPOCHS
            assert e <= t["epochs_run"], (replay, t["epochs_run"])
            assert not replay.startswith("past@") or t["status"] == "stopped"
        words = {True: "yes", False: "no", None: "open"}
        assert r.replay_same == ("n/a" if failed else
                                 words[bench.agree(r.replay_u, r.replay_p)])
    compared = int((rows["sweep_same"] != "n/a").sum())
    for what, line in (("sweep", "the sweeps (arrival order)"),
                       ("replay", "replayed in proposal order")):
        agreed = int((rows[f"{what}_same"] == "yes").sum())
        assert f"ASHA decisions, {line}: {agreed} of {compared} agree" in out


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "solo and packed trials start from the same weights (models.cola_adapter.seeded_start), but "
    "their dropout masks (the tiny GPT-2's own and LoRA's) come from other random streams: the "
    "same configuration's metrics agree in distribution, not per epoch. Strict: once both draw "
    "the same masks, this passes and the mark must go."))
def test_matched_configurations_train_to_the_same_metrics(bench_run):
    # test_packed.py's tolerance for a packed trial's per-epoch metrics against the same
    # configuration alone (same initial weights, dropout off).
    rows = matched_rows(bench_run[0])
    for col in ("d_val_mcc", "d_best_val_auc"):
        worst = rows[col].astype(float).max()
        assert not math.isnan(worst) and worst <= 1e-4, (col, worst)
