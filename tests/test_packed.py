"""Packed adapters (models/packed): K LoRA configurations trained at once on one frozen base give
each configuration the losses it has trained alone with peft and the shared loop's step (same
initial weights, same batches in the same order), step by step, on a tiny GPT-2 (Conv1D layers)
and a tiny Llama (nn.Linear, grouped-query attention): different ranks, alphas, learning rates,
weight decays, warm-ups and batch sizes. A slot released mid-epoch and taken by a new
configuration changes nothing for the others, and a slot exported and attached again resumes
exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.cola_lora import ColaLoraConfig, build_lora_model
from models.data.batching import classification_batches
from models.hf import load_sequence_classifier
from models.lora import lora_targets
from models.loop import build_optimizer
from models.packed.lora import PackedLoRA
from models.packed.trainer import PackedTrainer, SlotPlan

from test_lora_and_loop import separable

# Three configurations, and a fourth that takes the first one's slot when it is released.
CONFIGS = [dict(lora_r=4, lora_alpha=8, learning_rate=1e-2, batch_size=8, weight_decay=0.0,
                warmup_ratio=0.1, seed=1),
           dict(lora_r=8, lora_alpha=32, learning_rate=3e-3, batch_size=16, weight_decay=0.05,
                warmup_ratio=0.0, seed=2),
           dict(lora_r=2, lora_alpha=4, learning_rate=5e-3, batch_size=12, weight_decay=0.1,
                warmup_ratio=0.3, seed=3),
           dict(lora_r=6, lora_alpha=6, learning_rate=2e-2, batch_size=10, weight_decay=0.0,
                warmup_ratio=0.0, seed=4)]
STEPS = 6  # packed steps; the fourth joins after the first's third step
TOTAL = 40  # the schedule's length (as if max_epochs x steps per epoch)


def cfg_of(model_dir: str, c: dict) -> ColaLoraConfig:
    return ColaLoraConfig(model=model_dir, lora_dropout=0.0, max_epochs=1, **c)


def plan_of(cfg: ColaLoraConfig) -> SlotPlan:
    return SlotPlan(rank=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                    learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                    warmup_ratio=cfg.warmup_ratio, total_steps=TOTAL, seed=cfg.seed)


def batches_of(data, cfg):
    ids, labels = data.split("fit")
    return classification_batches(ids, labels, batch_size=cfg.batch_size, pad_id=0,
                                  shuffle_seed=cfg.seed * 1000 + 1, group_by_length=True)


def no_base_dropout(model):
    """GPT-2's own dropout (attention, residual, embeddings) off: drawn from one random stream
    for the packed batch and another for a batch alone, it would differ per step (it is the
    same in distribution; LoRA's dropout is 0 here for the same reason)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def packed_run(model_dir: str, data, **trainer_options):
    """-> ({config index: [loss per step]}, {config index: initial weights}, the model);
    ``trainer_options``: PackedTrainer's (static shapes, compile)."""
    base = no_base_dropout(load_sequence_classifier(model_dir, num_labels=2, pad_token_id=0))
    model = PackedLoRA(base, capacity=3, max_rank=8,
                       target_modules=lora_targets(base, None))
    trainer = PackedTrainer(model, device="cpu", pad_id=0, **trainer_options)
    cfgs = [cfg_of(model_dir, c) for c in CONFIGS]
    slot_of, losses, initial = {}, {i: [] for i in range(4)}, {}
    for i in range(3):
        slot_of[i] = trainer.attach(plan_of(cfgs[i]))
        initial[i] = trainer.export(slot_of[i])["weights"]
        trainer.start_epoch(slot_of[i], batches_of(data, cfgs[i]))
    for step in range(STEPS):
        if step == 3:  # config 0 is stopped; config 3 takes its slot
            trainer.release(slot_of.pop(0))
            slot_of[3] = trainer.attach(plan_of(cfgs[3]))
            assert slot_of[3] == 0
            initial[3] = trainer.export(slot_of[3])["weights"]
            trainer.start_epoch(slot_of[3], batches_of(data, cfgs[3]))
        assert trainer.step() == []
        for i, k in slot_of.items():
            losses[i].append(float(trainer.last_losses[k]))
    return losses, initial, model


def solo_run(model_dir: str, data, c: dict, initial: dict, steps: int) -> list[float]:
    """The configuration alone: peft's LoRA model with the packed slot's initial weights, the
    shared loop's optimizer, schedule and step (clip, step, schedule)."""
    cfg = cfg_of(model_dir, c)
    model = no_base_dropout(build_lora_model(cfg, pad_token_id=0))
    named = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in initial.items():
            if key == "head.weight":
                named["base_model.model.score.modules_to_save.default.weight"].copy_(value)
            else:
                path, which = key.rsplit(".", 1)
                named[f"base_model.model.{path}.{which}.default.weight"].copy_(value)
    opt, sched = build_optimizer(model, learning_rate=cfg.learning_rate,
                                 weight_decay=cfg.weight_decay, total_steps=TOTAL,
                                 warmup_ratio=cfg.warmup_ratio)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    out = []
    for _, batch in zip(range(steps), batches_of(data, cfg)):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


def resumed_losses(trainer, slot: int, batches, *, taken: int, steps: int) -> list[float]:
    """``slot``'s losses over ``steps`` steps of ``batches`` after the ``taken`` batches an
    earlier trainer took (its epoch resumed where the exported slot left it)."""
    rest = iter(batches)
    for _ in range(taken):
        next(rest)
    trainer.start_epoch(slot, rest)
    out = []
    for _ in range(steps):
        trainer.step()
        out.append(float(trainer.last_losses[slot]))
    return out


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_packed_adapters_train_as_each_would_alone(which, tiny_model, tiny_llama):
    model_dir = tiny_model if which == "gpt2" else tiny_llama
    data = separable()
    losses, initial, model = packed_run(model_dir, data)
    steps = {0: 3, 1: STEPS, 2: STEPS, 3: STEPS - 3}
    for i, c in enumerate(CONFIGS):
        alone = solo_run(model_dir, data, c, initial[i], steps[i])
        assert len(losses[i]) == steps[i]
        np.testing.assert_allclose(losses[i], alone, rtol=2e-5, atol=2e-6,
                                   err_msg=f"config {i}")
    # The losses moved: the adapters trained (a frozen adapter would give the same check).
    assert losses[1][0] != losses[1][-1]
    # The base stayed frozen and a rank-2 slot's padding stayed zero.
    layer = next(iter(model.layers.values()))
    assert not layer.base.weight.requires_grad
    assert torch.count_nonzero(layer.lora_A[2][2:]) == 0
    assert torch.count_nonzero(layer.lora_B[2][:, 2:]) == 0


def test_an_exported_slot_resumes_exactly(tiny_model):
    data = separable()

    def trainer_with(state=None):
        base = no_base_dropout(load_sequence_classifier(tiny_model, num_labels=2,
                                                        pad_token_id=0))
        model = PackedLoRA(base, capacity=2, max_rank=8, target_modules=lora_targets(base, None))
        trainer = PackedTrainer(model, device="cpu", pad_id=0)
        return trainer, trainer.attach(plan_of(cfg_of(tiny_model, CONFIGS[1])), state)

    cfg = cfg_of(tiny_model, CONFIGS[1])
    whole, slot = trainer_with()
    whole.start_epoch(slot, batches_of(data, cfg))
    straight = []
    for _ in range(5):
        whole.step()
        straight.append(float(whole.last_losses[slot]))

    first, slot = trainer_with()
    first.start_epoch(slot, batches_of(data, cfg))
    for _ in range(2):
        first.step()
    state = first.export(slot)
    second, slot = trainer_with(state)
    resumed = resumed_losses(second, slot, batches_of(data, cfg), taken=2, steps=3)
    np.testing.assert_allclose(resumed, straight[2:], rtol=1e-6)


def test_engine_trains_each_trial_as_alone_beside_others(tiny_llama):
    """The engine (models/packed/engine.py): three trials, each in its own thread as Ray's
    calls arrive, run their epochs beside one another; every trial's per-epoch metrics equal
    those of the same configuration alone in an engine of one slot (LoRA dropout 0; the
    Llama has no dropout of its own). A fourth waits for a slot, then takes a released one."""
    import threading

    from models.data.classification import tokenize_splits
    from models.data.cola import synthetic_cola
    from models.hf import load_tokenizer
    from models.loop import LoopState
    from models.packed.engine import PackedEngine

    data = tokenize_splits(synthetic_cola(n_train=120, n_dev=40), load_tokenizer(tiny_llama),
                           selection_fraction=0.25, seed=0)
    cfgs = [ColaLoraConfig(model=tiny_llama, lora_dropout=0.0, max_epochs=2, **c)
            for c in CONFIGS]

    def engine(capacity):
        return PackedEngine(model_dir=tiny_llama, data=data, capacity=capacity, max_rank=8,
                            target_modules=None)

    def trial(eng, cfg, out, key):
        slot = eng.attach(cfg)  # the fourth waits here until a slot is released
        loop, rows = LoopState(), []
        while loop.epoch < cfg.max_epochs:
            metrics, _, loop = eng.run_epoch(slot, loop)
            rows.append({k: metrics[k] for k in ("train_loss", "val_loss", "val_mcc",
                                                 "best_val_mcc", "epoch", "train_accuracy")})
        eng.release(slot)
        out[key] = rows

    alone = {}
    for i, cfg in enumerate(cfgs):
        eng = engine(1)
        trial(eng, cfg, alone, i)
        eng.close()
    together = {}
    eng = engine(3)
    threads = [threading.Thread(target=trial, args=(eng, cfg, together, i))
               for i, cfg in enumerate(cfgs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    eng.close()
    assert sorted(together) == [0, 1, 2, 3]
    for i in range(4):
        assert [r["epoch"] for r in together[i]] == [1, 2]
        for a, b in zip(together[i], alone[i]):
            for k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (i, k)


def test_engine_refuses_what_it_cannot_pack_and_frees_a_slot_mid_epoch(tiny_llama,
                                                                       monkeypatch):
    """A rank above the engine's largest, micro-batches or --compile (on an engine started
    without it) are a config error (the trial ends once, naming the field); a slot released while its trial waits for an epoch
    (Tune ended the trial) hands the wait back empty, and the slot is free again. The epoch
    here never ends (its batches repeat for ever), so the release always comes mid-epoch."""
    import itertools
    import threading

    import models.packed.engine as engine_module

    from models.data.classification import tokenize_splits
    from models.data.cola import synthetic_cola
    from models.errors import ConfigError
    from models.hf import load_tokenizer
    from models.loop import LoopState
    from models.packed.engine import PackedEngine

    data = tokenize_splits(synthetic_cola(n_train=40, n_dev=20), load_tokenizer(tiny_llama),
                           selection_fraction=0.25, seed=0)
    eng = PackedEngine(model_dir=tiny_llama, data=data, capacity=1, max_rank=8,
                       target_modules=None)
    for bad in ({"lora_r": 16}, {"micro_batch_size": 4}, {"compile": True}):
        with pytest.raises(ConfigError) as e:
            eng.attach(ColaLoraConfig(model=tiny_llama, **bad), owner="x")
        assert next(iter(bad)) in str(e.value)
    endless = lambda cfg, ids, labels, **kw: itertools.cycle(  # noqa: E731
        [next(classification_batches(ids, labels, batch_size=2, pad_id=kw["pad_id"]))])
    monkeypatch.setattr(engine_module, "epoch_batches", endless)
    cfg = ColaLoraConfig(model=tiny_llama, batch_size=2, max_epochs=1)
    slot = eng.attach(cfg, owner="a")
    out = {}
    waiter = threading.Thread(target=lambda: out.update(r=eng.run_epoch(slot, LoopState())),
                              daemon=True)
    waiter.start()
    while slot not in eng.jobs:  # until its epoch has begun
        threading.Event().wait(0.01)
    eng.release_owner("a")
    waiter.join(timeout=60)
    assert not waiter.is_alive() and out["r"] is None
    assert eng.attach(cfg, owner="b", wait=False) == slot
    # A trial's second attempt (Tune's retry, --resume) takes over the slot its first attempt
    # left; the first attempt's late release does not free it; the sweep's release of the
    # trial does.
    eng.release_owner("b")
    first = eng.attach(cfg, owner="t:1")
    second = eng.attach(cfg, owner="t:2", wait=False)
    assert second == first
    eng.release_owner("t:1")
    assert eng.owners.get(second) == "t:2" and not eng.trainer.free_slots()
    eng.release_owner("t")
    assert eng.trainer.free_slots() == [second]
    eng.close()
