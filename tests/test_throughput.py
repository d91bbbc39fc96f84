"""Behaviour of the throughput work (timings live in bench/train_throughput.py): length-grouped
epochs hold every example exactly once and pad less, grouped and plain training reach the same
place (and so do torch's dropout and the cheaper CPU one), sorted evaluation gives back logits in the split's order, and a compiled model computes
the same loss and gradients as the eager one."""
import numpy as np
import pytest
import torch

from models.data.batching import classification_batches, epoch_order, length_sorted
from models.hf import load_tokenizer
from models.cola_adapter import forward as _forward
from models.cola_lora import ColaLoraConfig, build_lora_model, setup
from models.loop import build_optimizer, train_loop
from models.trial import seed_everything


@pytest.mark.parametrize("n,bs", [(1, 4), (7, 4), (64, 8), (1000, 32), (1001, 32), (5000, 16)])
def test_grouped_epoch_holds_every_example_once(n, bs):
    lengths = np.random.default_rng(n).integers(1, 60, size=n)
    for seed in (0, 1):
        order = epoch_order(lengths, batch_size=bs, seed=seed, group_by_length=True)
        assert sorted(order.tolist()) == list(range(n))
        ids = [np.arange(k) for k in lengths]
        seen = np.concatenate([b["labels"].numpy() for b in classification_batches(
            ids, np.arange(n), batch_size=bs, pad_id=0, shuffle_seed=seed, group_by_length=True)])
        assert sorted(seen.tolist()) == list(range(n))
        assert len(seen) == n and -(-n // bs) == len(range(0, n, bs))
    a = epoch_order(lengths, batch_size=bs, seed=0, group_by_length=True)
    assert np.array_equal(a, epoch_order(lengths, batch_size=bs, seed=0, group_by_length=True))
    if n > 2 * bs:
        assert not np.array_equal(a, epoch_order(lengths, batch_size=bs, seed=1, group_by_length=True))


def padded_tokens(lengths, order, bs):
    return sum(len(order[i:i + bs]) * lengths[order[i:i + bs]].max() for i in range(0, len(order), bs))


def test_grouping_pads_less_and_longest_batch_comes_first():
    lengths = np.random.default_rng(0).integers(3, 48, size=4000)
    plain = epoch_order(lengths, batch_size=32, seed=0, group_by_length=False)
    grouped = epoch_order(lengths, batch_size=32, seed=0, group_by_length=True)
    real = lengths.sum()
    assert padded_tokens(lengths, grouped, 32) < 1.1 * real < padded_tokens(lengths, plain, 32)
    assert lengths[grouped[:32]].max() == lengths.max()


def test_sorted_evaluation_returns_logits_in_split_order(synthetic, tiny_model):
    from models.classify import make_evaluator
    from models.data.classification import tokenize_splits
    from models.metrics import classification_metrics

    tok = load_tokenizer(tiny_model)
    data = tokenize_splits(synthetic, tok, selection_fraction=0.2, seed=0)
    seed_everything(0)
    model = build_lora_model(ColaLoraConfig(model=tiny_model), pad_token_id=data.pad_token_id).eval()
    ids, labels = data.split("dev")
    order, inverse = length_sorted(ids)
    assert np.array_equal(order[inverse], np.arange(len(ids)))
    with torch.no_grad():  # the plain way: split order, small batches
        logits = torch.cat([_forward(model, b) for b in classification_batches(
            ids, labels, batch_size=7, pad_id=data.pad_token_id)])
    got = make_evaluator(data, {"dev": "dev"}, forward=_forward, batch_size=64)(model)
    want = classification_metrics(labels, logits.argmax(-1).numpy())
    assert got["dev_accuracy"] == pytest.approx(want["accuracy"])
    assert got["dev_mcc"] == pytest.approx(want["mcc"])
    y = torch.as_tensor(labels)
    assert got["dev_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(),
                                            rel=1e-4)


def run(data, model_name, *, group: bool, epochs: int = 4, cpu_dropout: bool = False) -> dict:
    from models.dropout import use_cpu_dropout

    seed_everything(0)
    cfg = ColaLoraConfig(model=model_name, batch_size=16, learning_rate=3e-3, lora_r=8,
                         max_epochs=epochs, stage="retrain", group_by_length=group)
    s = setup(cfg, data, "cpu")
    if cpu_dropout:
        assert use_cpu_dropout(s.model) > 0
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                 total_steps=s.steps_per_epoch * epochs, warmup_ratio=0.06)
    rows = []
    train_loop(model=s.model, optimizer=opt, scheduler=sched, loss_fn=s.loss_fn,
               train_batches=s.train_batches, evaluate=s.evaluate, max_epochs=epochs,
               best_metric=s.best_metric, report=lambda m, st: rows.append(m))
    return rows[-1]


def test_grouped_and_plain_training_agree(synthetic, tiny_model):
    from models.data.classification import tokenize_splits

    tok = load_tokenizer(tiny_model)
    data = tokenize_splits(synthetic, tok, selection_fraction=0.2, seed=0)
    plain = run(data, tiny_model, group=False)
    grouped = run(data, tiny_model, group=True)
    # Different batch compositions, same data, same schedule: the same place, within noise.
    assert grouped["train_loss"] == pytest.approx(plain["train_loss"], abs=0.08)
    assert grouped["dev_loss"] == pytest.approx(plain["dev_loss"], abs=0.08)
    assert grouped["dev_accuracy"] == pytest.approx(plain["dev_accuracy"], abs=0.08)
    # ... and both learned: the generated task is learnable by the tiny model.
    assert min(grouped["dev_accuracy"], plain["dev_accuracy"]) > data.majority_baseline()["dev_accuracy"]


def test_cpu_dropout_trains_to_the_same_place(synthetic, tiny_model):
    from models.data.classification import tokenize_splits

    tok = load_tokenizer(tiny_model)
    data = tokenize_splits(synthetic, tok, selection_fraction=0.2, seed=0)
    torch_dropout = run(data, tiny_model, group=True)
    cheaper = run(data, tiny_model, group=True, cpu_dropout=True)
    # Other random masks, the same distribution: the same place, within noise.
    for k in ("train_loss", "dev_loss", "dev_accuracy"):
        assert cheaper[k] == pytest.approx(torch_dropout[k], abs=0.08), k
    assert cheaper["dev_accuracy"] > data.majority_baseline()["dev_accuracy"]


@pytest.mark.slow
def test_compiled_model_gives_eager_loss_and_gradients(synthetic, tiny_model):
    from models.data.classification import tokenize_splits

    tok = load_tokenizer(tiny_model)
    data = tokenize_splits(synthetic, tok, selection_fraction=0.2, seed=0)
    seed_everything(0)
    model = build_lora_model(ColaLoraConfig(model=tiny_model, lora_dropout=0.0),
                             pad_token_id=data.pad_token_id)
    compiled = torch.compile(model, dynamic=True)
    ids, labels = data.split("train")
    batches = list(classification_batches(ids[:48], labels[:48], batch_size=16,
                                          pad_id=data.pad_token_id, shuffle_seed=0,
                                          group_by_length=True))
    params = [p for p in model.parameters() if p.requires_grad]
    for b in batches:  # different lengths: one dynamic-shape graph serves them all
        eager = model(**b).loss
        g_eager = torch.autograd.grad(eager, params)
        comp = compiled(**b).loss
        g_comp = torch.autograd.grad(comp, params)
        assert comp.item() == pytest.approx(eager.item(), rel=1e-5, abs=1e-6)
        for a, c in zip(g_eager, g_comp):
            torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6)
