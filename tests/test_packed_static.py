"""Static shapes for the packed step (models/packed/static.py): every slot's rows padded to the
largest batch, the width to a length bucket, padding weighing 0. A slot's losses equal the
unpadded packed step's (which equal the configuration trained alone, tests/test_packed.py),
step by step, with a slot released and taken mid-run; compiled with static shapes, the step
gives the same losses and captures one graph per length bucket."""
from __future__ import annotations

import numpy as np
import pytest

from models.packed.static import StaticShapes, static_batch
from test_lora_and_loop import separable
from test_packed import CONFIGS, packed_run


def shapes_for(data) -> StaticShapes:
    ids, _ = data.split("fit")
    # multiple=1: the toy sentences (3-8 tokens) fall into several buckets
    return StaticShapes.for_lengths([len(x) for x in ids],
                                    rows=max(c["batch_size"] for c in CONFIGS), multiple=1)


def test_buckets_are_quantiles_rounded_up_and_hold_the_longest():
    s = StaticShapes.for_lengths(list(range(1, 101)), rows=4)
    assert s.widths == (56, 80, 96, 100)
    assert s.width(1) == 56 and s.width(57) == 80 and s.width(100) == 100
    with pytest.raises(ValueError, match="wider than the longest bucket"):
        s.width(101)
    assert StaticShapes.for_lengths([3, 3, 3], rows=1).widths == (3,)


def test_a_static_batch_pads_rows_and_width_and_weighs_padding_zero():
    import torch

    s = StaticShapes(rows=3, widths=(4, 8))
    b = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]), "labels": torch.tensor([1, 0])}
    batch, weights = static_batch(s, 2, {1: b}, pad_id=0, device="cpu")
    assert batch["input_ids"].shape == (6, 4)
    assert batch["input_ids"][3:5, :3].tolist() == b["input_ids"].tolist()
    assert weights.tolist() == [0, 0, 0, 0.5, 0.5, 0]
    # every row attends to at least one token (a fully masked row would give NaNs)
    assert (batch["attention_mask"].sum(1) >= 1).all()
    assert batch["labels"][3:5].tolist() == [1, 0]


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_static_shapes_give_each_slot_the_losses_of_the_unpadded_step(which, tiny_model,
                                                                      tiny_llama):
    model_dir = tiny_model if which == "gpt2" else tiny_llama
    data = separable()
    plain, _, _ = packed_run(model_dir, data)
    static, _, _ = packed_run(model_dir, data, static=shapes_for(data))
    for i in plain:
        np.testing.assert_allclose(static[i], plain[i], rtol=2e-5, atol=2e-6,
                                   err_msg=f"config {i}")


def test_a_compiled_static_step_captures_one_graph_per_bucket(tiny_model):
    data = separable()
    # The steps' longest sentences here are 6, 7 and 8 tokens: 7 goes into the 8 bucket.
    shapes = StaticShapes(rows=max(c["batch_size"] for c in CONFIGS), widths=(6, 8))
    graphs = []

    def counting(gm, example_inputs):  # a torch.compile backend: records each graph it gets
        graphs.append([tuple(x.shape) for x in example_inputs if hasattr(x, "shape")])
        return gm.forward

    plain, _, _ = packed_run(tiny_model, data)
    compiled, _, _ = packed_run(tiny_model, data, static=shapes, compile=True, backend=counting)
    for i in plain:
        np.testing.assert_allclose(compiled[i], plain[i], rtol=2e-5, atol=2e-6)
    rows = 3 * shapes.rows  # the test's capacity
    widths = [next(s[1] for s in g if len(s) == 2 and s[0] == rows) for g in graphs]
    assert len(widths) == len(set(widths)), f"a bucket compiled twice: {widths}"
    assert sorted(widths) == [6, 8]


def test_a_compiled_engine_takes_compiled_configs_up_to_its_rows(tiny_model):
    """--compile --pack: the engine's static shapes hold the sweep's largest batch; a larger
    batch, or a configuration not compiled, is a config error naming the field."""
    from models.cola_lora import ColaLoraConfig
    from models.data.classification import tokenize_splits
    from models.data.cola import synthetic_cola
    from models.errors import ConfigError
    from models.hf import load_tokenizer
    from models.packed.engine import PackedEngine

    data = tokenize_splits(synthetic_cola(n_train=40, n_dev=20), load_tokenizer(tiny_model),
                           selection_fraction=0.25, seed=0)
    eng = PackedEngine(model_dir=tiny_model, data=data, capacity=2, max_rank=8,
                       target_modules=None, compile=True, max_batch=16)
    try:
        assert eng.static.rows == 16
        assert eng.static.widths[-1] == max(len(x) for x in eng.ids)
        for bad in ({"batch_size": 32, "compile": True}, {"batch_size": 16, "compile": False}):
            with pytest.raises(ConfigError) as e:
                eng.attach(ColaLoraConfig(model=tiny_model, **bad), owner="x")
            assert ("batch_size" if bad["compile"] else "compile") in str(e.value)
        assert eng.attach(ColaLoraConfig(model=tiny_model, batch_size=16, compile=True),
                          owner="a") == 0
    finally:
        eng.close()
