"""Packed IA3 and DoRA (models/packed/ia3.py, dora.py): K configurations of one method trained
at once on one frozen base give each configuration the losses it has trained alone with peft
(``models.cola_ia3``, ``models.cola_dora``) and the shared loop (``models.loop.train_loop``),
step by step, on a tiny GPT-2 (Conv1D layers; IA3's feed-forward and output vectors) and a tiny
Llama (nn.Linear): DoRA with different ranks, alphas, learning rates, weight decays and batch
sizes; IA3 with different learning rates, batch sizes, seeds and weight decays. A slot starts
from its seed alone, an exported slot resumes exactly, DoRA's dropout is peft's (the base
recomputed on the dropped input), the trainable counts are peft's, and the engine packs both."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from models.cola_dora import ColaDoraConfig, build_dora_model
from models.cola_ia3 import ColaIA3Config, build_ia3_model
from models.hf import load_sequence_classifier
from models.loop import build_optimizer, train_loop
from models.packed.dora import DORA
from models.packed.ia3 import IA3
from models.packed.layers import dropout_mask
from models.packed.model import PackedModel
from models.packed.trainer import PackedTrainer, SlotPlan

from test_lora_and_loop import separable
from test_packed import TOTAL, batches_of, no_base_dropout, resumed_losses

# Large steps: a few of them move the adapters far enough from their start (IA3's vectors from
# 1, DoRA's magnitudes from the weights' norms) that a wrong formula shows in the losses.
DORA_CONFIGS = [dict(lora_r=4, lora_alpha=8, learning_rate=3e-2, batch_size=8, weight_decay=0.0,
                     warmup_ratio=0.1, seed=1),
                dict(lora_r=8, lora_alpha=32, learning_rate=1e-2, batch_size=16,
                     weight_decay=0.05, warmup_ratio=0.0, seed=2),
                dict(lora_r=2, lora_alpha=4, learning_rate=2e-2, batch_size=12, weight_decay=0.1,
                     warmup_ratio=0.3, seed=3)]
# weight_decay: peft's IA3 vectors are 2-D ([1, in] or [out, 1]), so a solo trial decays them
IA3_CONFIGS = [dict(learning_rate=1e-1, batch_size=8, weight_decay=0.0, warmup_ratio=0.1, seed=1),
               dict(learning_rate=2e-2, batch_size=16, weight_decay=0.2, warmup_ratio=0.0,
                    seed=2),
               dict(learning_rate=5e-2, batch_size=12, weight_decay=0.0, warmup_ratio=0.3,
                    seed=3)]
METHODS = {"dora": (DORA, ColaDoraConfig, build_dora_model, DORA_CONFIGS),
           "ia3": (IA3, ColaIA3Config, build_ia3_model, IA3_CONFIGS)}
STEPS = 4
# Packed and alone differ by float rounding only (the order of sums): far below what a wrong
# formula, a missing detach or decay, or a vector on the wrong side gives.
RTOL, ATOL = 5e-6, 5e-7


def cfg_of(which: str, model_dir: str, c: dict, **over):
    _, config_cls, _, _ = METHODS[which]
    extra = {"lora_dropout": 0.0} if which == "dora" else {}
    return config_cls(model=model_dir, max_epochs=1, **{**extra, **c, **over})


def plan_of(which: str, cfg) -> SlotPlan:
    return SlotPlan(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                    warmup_ratio=cfg.warmup_ratio, total_steps=TOTAL, seed=cfg.seed,
                    **METHODS[which][0].plan_args(cfg))


def packed_trainer(which: str, model_dir: str, capacity: int) -> PackedTrainer:
    base = no_base_dropout(load_sequence_classifier(model_dir, num_labels=2, pad_token_id=0))
    model = PackedModel(base, method=METHODS[which][0], capacity=capacity, target_modules=None,
                        max_rank=8)
    return PackedTrainer(model, device="cpu", pad_id=0)


def run_slots(trainer: PackedTrainer, data, cfgs: list, plans: list, steps: int):
    """-> ({config index: [loss per step]}, {config index: its initial weights}, slots)."""
    slots, initial = [], {}
    for i, (cfg, plan) in enumerate(zip(cfgs, plans, strict=True)):
        slots.append(trainer.attach(plan))
        initial[i] = trainer.export(slots[i])["weights"]
        trainer.start_epoch(slots[i], batches_of(data, cfg))
    losses = {i: [] for i in range(len(cfgs))}
    for _ in range(steps):
        assert trainer.step() == []
        for i, k in enumerate(slots):
            losses[i].append(float(trainer.last_losses[k]))
    return losses, initial, slots


def peft_name(key: str, named: dict) -> str:
    """A packed slot's tensor name -> the peft model's parameter."""
    if key.startswith("head."):
        return f"base_model.model.score.modules_to_save.default.{key[5:]}"
    return next(n for n in (f"base_model.model.{key}.default.weight",
                            f"base_model.model.{key}.default") if n in named)


def solo_run(which: str, cfg, data, initial: dict, steps: int, *, dropout=None):
    """The configuration alone: the peft model with the packed slot's initial weights (the
    deterministic ones, IA3's ones and DoRA's magnitudes, checked equal to peft's own), trained
    by the shared loop. -> (losses, peft's trainable-parameter count). ``dropout``: a module
    to put in place of peft's LoRA dropout."""
    model = no_base_dropout(METHODS[which][2](cfg, pad_token_id=0))
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert {peft_name(k, named) for k in initial} == trainable
    with torch.no_grad():
        for key, value in initial.items():
            p = named[peft_name(key, named)]
            if key.endswith(("ia3_l", "lora_magnitude_vector")):
                torch.testing.assert_close(value.view_as(p), p, rtol=1e-6, atol=1e-7)
            p.copy_(value.view_as(p))
    if dropout is not None:
        for m in model.modules():
            if hasattr(m, "lora_dropout"):
                m.lora_dropout["default"] = dropout
    opt, sched = build_optimizer(model, learning_rate=cfg.learning_rate,
                                 weight_decay=cfg.weight_decay, total_steps=TOTAL,
                                 warmup_ratio=cfg.warmup_ratio)
    losses = []

    def loss_fn(m, batch):
        loss = m(**batch).loss
        losses.append(loss.item())
        return loss

    if dropout is not None:
        torch.manual_seed(0)
    train_loop(model=model, optimizer=opt, scheduler=sched, loss_fn=loss_fn,
               train_batches=lambda epoch: itertools.islice(batches_of(data, cfg), steps),
               evaluate=lambda m: {"score": 0.0}, max_epochs=1, best_metric="score",
               report=lambda metrics, state: None)
    return losses, sum(named[n].numel() for n in trainable)


@pytest.mark.parametrize("which", ["dora", "ia3"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_slots_train_as_each_would_alone(which, arch, tiny_model, tiny_llama):
    model_dir = tiny_model if arch == "gpt2" else tiny_llama
    data = separable()
    cfgs = [cfg_of(which, model_dir, c) for c in METHODS[which][3]]
    plans = [plan_of(which, cfg) for cfg in cfgs]
    trainer = packed_trainer(which, model_dir, capacity=3)
    losses, initial, _ = run_slots(trainer, data, cfgs, plans, STEPS)
    for i, cfg in enumerate(cfgs):
        alone, count = solo_run(which, cfg, data, initial[i], STEPS)
        np.testing.assert_allclose(losses[i], alone, rtol=RTOL, atol=ATOL,
                                   err_msg=f"{which} config {i}")
        assert trainer.model.trainable(plans[i]) == count
        assert losses[i][0] != losses[i][-1]  # the adapters trained
    layers = list(trainer.model.layers.values())
    assert not layers[0].base.weight.requires_grad
    if which == "dora":  # a rank-2 slot's padding stayed zero
        assert torch.count_nonzero(layers[0].lora_A[2][2:]) == 0
        assert torch.count_nonzero(layers[0].lora_B[2][:, 2:]) == 0
    else:  # peft's defaults: feed-forward modules rescale their input, the others their output
        assert {layer.feedforward for layer in layers} == {True, False}


@pytest.mark.parametrize("which", ["dora", "ia3"])
def test_a_slot_starts_from_its_seed_alone_and_resumes_exactly(which, tiny_model):
    data = separable()
    cfg = cfg_of(which, tiny_model, METHODS[which][3][0])
    other = cfg_of(which, tiny_model, METHODS[which][3][1])
    plan = plan_of(which, cfg)

    whole = packed_trainer(which, tiny_model, capacity=2)
    straight, initial, (slot,) = run_slots(whole, data, [cfg], [plan], 5)

    first = packed_trainer(which, tiny_model, capacity=2)
    first.attach(plan_of(which, other))  # a neighbour in slot 0 changes nothing of slot 1
    before, start, (slot,) = run_slots(first, data, [cfg], [plan], 2)
    assert slot == 1
    for name, value in initial[0].items():
        torch.testing.assert_close(start[0][name], value, rtol=0, atol=0)
    state = first.export(slot)
    second = packed_trainer(which, tiny_model, capacity=2)
    slot = second.attach(plan, state)
    resumed = resumed_losses(second, slot, batches_of(data, cfg), taken=2, steps=3)
    np.testing.assert_allclose(before[0], straight[0][:2], rtol=1e-6)
    np.testing.assert_allclose(resumed, straight[0][2:], rtol=1e-6)


def test_dora_dropout_recomputes_the_base_on_the_dropped_input_as_peft_does(tiny_model):
    """With dropout on, peft's DoRA takes W x from the dropped input; the packed slot draws the
    same masks as the solo model here (one slot, one mask function, one seed), so the losses
    are equal only if it does the same."""
    data = separable()
    cfg = cfg_of("dora", tiny_model, DORA_CONFIGS[1], lora_dropout=0.3)

    class SameMask(torch.nn.Module):
        def forward(self, x):
            flat = x.reshape(1, -1, x.shape[-1])
            return (flat * dropout_mask(flat, torch.tensor([0.3]))).view_as(x)

    trainer = packed_trainer("dora", tiny_model, capacity=2)
    slot = trainer.attach(plan_of("dora", cfg))
    initial = trainer.export(slot)["weights"]
    trainer.start_epoch(slot, batches_of(data, cfg))
    torch.manual_seed(0)
    packed = []
    for _ in range(STEPS):
        trainer.step()
        packed.append(float(trainer.last_losses[slot]))
    alone, _ = solo_run("dora", cfg, data, initial, STEPS, dropout=SameMask())
    np.testing.assert_allclose(packed, alone, rtol=RTOL, atol=ATOL)


def test_a_slot_without_dropout_keeps_everything_beside_one_with():
    mask = dropout_mask(torch.ones(2, 64, 16), torch.tensor([0.0, 0.5]))
    assert torch.equal(mask[0], torch.ones(64, 16))
    assert 0.3 < (mask[1] == 0).float().mean() < 0.7


def test_engine_packs_ia3_and_dora_and_refuses_what_it_cannot(tiny_llama):
    """The engine with IA3 and DoRA: a trial's trainable count is its solo peft model's; a
    rank above the engine's largest, other targets than the engine's, or micro-batches are a
    config error naming the field; a trial of another method is refused (an engine started
    with the wrong method would train it with that method's maths); an IA3 trial runs its
    epoch."""
    from models.data.classification import tokenize_splits
    from models.data.cola import synthetic_cola
    from models.errors import ConfigError
    from models.hf import load_tokenizer
    from models.loop import LoopState
    from models.packed.engine import PackedEngine

    data = tokenize_splits(synthetic_cola(n_train=40, n_dev=20), load_tokenizer(tiny_llama),
                           selection_fraction=0.25, seed=0)
    for which, c, bad in (("ia3", IA3_CONFIGS[1], {"target_modules": ("q_proj",)}),
                          ("dora", DORA_CONFIGS[0], {"lora_r": 16})):
        eng = PackedEngine(model_dir=tiny_llama, data=data, capacity=2, max_rank=8,
                           target_modules=None, method=METHODS[which][0])
        for wrong in (bad, {"micro_batch_size": 4}):
            with pytest.raises(ConfigError) as e:
                eng.attach(cfg_of(which, tiny_llama, c, **wrong), owner="x")
            assert next(iter(wrong)) in str(e.value)
        other = cfg_of("ia3" if which == "dora" else "dora", tiny_llama,
                       METHODS["ia3" if which == "dora" else "dora"][3][0])
        with pytest.raises(TypeError, match=f"engine packs {which}"):
            eng.attach(other, owner="y")
        cfg = cfg_of(which, tiny_llama, c)
        slot = eng.attach(cfg, owner="a")
        peft_model = METHODS[which][2](cfg, pad_token_id=data.pad_token_id)
        assert eng.describe(slot)["trainable_params"] == sum(
            p.numel() for p in peft_model.parameters() if p.requires_grad)
        if which == "ia3":
            metrics, state, loop = eng.run_epoch(slot, LoopState())
            assert loop.epoch == 1 and np.isfinite(metrics["train_loss"])
            assert set(state["weights"]) == set(eng.model.slotted())
        eng.close()


@pytest.mark.parametrize("which", ["lora", "dora", "ia3"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_solo_trial_starts_where_a_packed_slot_of_its_seed_starts(which, arch, tiny_model,
                                                                     tiny_llama):
    """Same configuration, same seed: the solo trial's setup (peft) and a packed slot hold the
    same initial adapter and head (models.cola_adapter.seeded_start), whatever else the global
    random stream did before."""
    from models.cola_adapter import adapter_setup
    from models.cola_lora import ColaLoraConfig, build_lora_model
    from models.packed.lora import LORA

    model_dir = tiny_model if arch == "gpt2" else tiny_llama
    data = separable()
    packed, config_cls, build, _ = ({"lora": (LORA, ColaLoraConfig, build_lora_model, None)}
                                    | METHODS)[which]
    extra = {"lora_r": 4, "lora_alpha": 8} if which != "ia3" else {}
    cfg = config_cls(model=model_dir, seed=11, **extra)
    base = load_sequence_classifier(model_dir, num_labels=2, pad_token_id=0)
    trainer = PackedTrainer(PackedModel(base, method=packed, capacity=2, target_modules=None,
                                        max_rank=8), device="cpu", pad_id=0)
    trainer.attach(SlotPlan(learning_rate=1e-3, weight_decay=0.0, warmup_ratio=0.0,
                            total_steps=10, seed=99, **packed.plan_args(cfg)))  # a neighbour
    slot = trainer.attach(SlotPlan(learning_rate=1e-3, weight_decay=0.0, warmup_ratio=0.0,
                                   total_steps=10, seed=cfg.seed, **packed.plan_args(cfg)))
    initial = trainer.export(slot)["weights"]
    torch.manual_seed(12345)  # the global stream is not what decides the start
    solo = dict(adapter_setup(cfg, data, "cpu", build_model=build).model.named_parameters())
    assert any(k.endswith("lora_A") for k in initial) == (which != "ia3")
    for key, value in initial.items():
        torch.testing.assert_close(solo[peft_name(key, solo)].reshape(value.shape), value,
                                   rtol=0, atol=0, msg=key)
