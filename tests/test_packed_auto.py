"""``--pack auto`` (models/packed/probe.py, search/packing.py): the knee of the packed throughput
curve is the fewest slots within 10 % of the best measured; the probe times real packed steps of
a tiny model for K = 1, 2, 4, ... up to what memory allows, and stops past the knee."""
from __future__ import annotations

import pytest

from models.packed.probe import knee, throughput_curve


def curve(*rates):
    return [{"k": 2 ** i, "samples_per_s": r} for i, r in enumerate(rates)]


@pytest.mark.parametrize("rates, expected", [
    ((100, 190, 360, 640, 700, 705), 8),   # climbs, then flattens: the knee
    ((100, 101, 99, 98), 1),               # flat (a CPU): one slot does as well
    ((100, 200, 400, 800), 8),             # still climbing at the largest K measured
    ((100, 180, 170), 2),                  # falls past the knee
])
def test_knee_is_the_fewest_slots_within_a_tenth_of_the_best(rates, expected):
    assert knee(curve(*rates)) == expected


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_probe_times_each_k_up_to_the_cap_on_a_tiny_model(tiny_model, method):
    from models.packed.ia3 import IA3
    from models.packed.lora import LORA

    from models.data.classification import tokenize_splits
    from models.data.cola import synthetic_cola
    from models.hf import load_tokenizer

    data = tokenize_splits(synthetic_cola(), load_tokenizer(tiny_model), selection_fraction=0.1,
                           seed=0)
    said = []
    packed, adapter = {"lora": (LORA, {"rank": 4, "alpha": 8, "dropout": 0.1}),
                       "ia3": (IA3, {})}[method]
    points = throughput_curve(model_dir=tiny_model, data=data, max_k=6, batch_size=8,
                              method=packed, adapter=adapter, target_modules=None, steps=1,
                              share=0.0, say=said.append)
    assert [p["k"] for p in points] == [1, 2, 4, 6]  # powers of two, and the cap itself
    assert all(p["samples_per_s"] > 0 for p in points)
    assert len(said) == 4 and said[-1].startswith("   probe: K=6: ")


def test_probe_stops_once_a_k_falls_below_the_share_of_the_best(tiny_model):
    from models.packed.lora import LORA

    from models.data.classification import tokenize_splits
    from models.data.cola import synthetic_cola
    from models.hf import load_tokenizer

    data = tokenize_splits(synthetic_cola(), load_tokenizer(tiny_model), selection_fraction=0.1,
                           seed=0)
    # A share above 1 makes every K after the first fall short of the best so far.
    points = throughput_curve(model_dir=tiny_model, data=data, max_k=8, batch_size=4,
                              method=LORA, adapter={"rank": 2, "alpha": 4, "dropout": 0.0},
                              target_modules=None, steps=1, share=1e9, say=lambda _: None)
    assert [p["k"] for p in points] == [1, 2]


def _plan(pack: int):
    from types import SimpleNamespace

    return SimpleNamespace(pack=pack, pack_auto=True, study=None, space={}, fixed={"model": "m"},
                           memory_note={}, concurrency=2, total_cpus=2, engine_memory=0,
                           client_memory=0)


def _prepared():
    from types import SimpleNamespace

    from search.memory import GIB, Estimate

    return SimpleNamespace(data=None, model_while_planning="m",
                           packed_memory=lambda study, space, fixed, k: Estimate(k * GIB, "k GiB"))


@pytest.mark.parametrize("curve, packed", [
    ([{"k": 1, "samples_per_s": 10.0}, {"k": 2, "samples_per_s": 10.5},
      {"k": 4, "samples_per_s": 9.0}], False),  # flat: unpacked
    ([{"k": 1, "samples_per_s": 10.0}, {"k": 2, "samples_per_s": 30.0},
      {"k": 4, "samples_per_s": 31.0}], True),  # climbs to K=2
])
def test_auto_packs_the_knee_or_runs_unpacked_when_one_slot_does_as_well(monkeypatch, curve,
                                                                        packed):
    import search.packing
    from search.memory import GIB
    from search.resources import _plan_packed

    asked = []
    monkeypatch.setattr(search.packing, "probe_slots",
                        lambda plan, data, most, model: asked.append(most) or (knee(curve), curve))
    plan = _plan(pack=16)
    _plan_packed(plan, _prepared(), avail=int(6.5 * GIB))
    # memory first: 5 slots of 1 GiB and 5 trial processes of 0.3 GiB fit in 6.5 GiB, 6 do not
    assert asked == [5]
    assert plan.memory_note["packed"]["probe"] == curve
    if packed:
        assert plan.pack == plan.concurrency == 2 and plan.engine_memory == 2 * GIB
    else:
        assert plan.pack == 1 and plan.total_cpus == 0 and plan.concurrency == 2
        assert plan.engine_memory == 0
