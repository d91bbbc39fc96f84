"""Micro-batches (``micro_batch_size``, set by the memory plan): each batch runs in chunks
whose losses are weighted by their share of what the loss averages over, so training gives
the results of the whole batch: the same losses, counts and parameters, on the CoLA
classification path and the summarization path (the studies' own setups, a tiny GPT-2)."""
import numpy as np
import pytest
import torch

from models.data.classification import ClassificationData
from models.data.cnndm import IGNORE, synthetic_articles, tokenize_articles
from models.loop import MicroBatched, micro_batched, train_loop

SEP = " TL;DR:"


def _no_dropout(model) -> None:
    """Dropout draws other masks for a chunk than for the whole batch: off, so that the two
    runs compute the same function."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _train(setup_fn, cfg, data, epochs: int = 2):
    """The study's setup trained by the shared loop with plain SGD and no clipping: an update
    is the learning rate times the gradient, so a gradient weighted wrongly (by a constant
    factor too, which Adam or clipping would hide) moves the parameters elsewhere."""
    torch.manual_seed(0)
    s = setup_fn(cfg, data, "cpu")
    _no_dropout(s.model)
    params = [p for p in s.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    rows = []
    train_loop(model=s.model, optimizer=opt, scheduler=sched, loss_fn=s.loss_fn,
               train_batches=s.train_batches, evaluate=s.evaluate, max_epochs=epochs,
               best_metric=s.best_metric, mode=s.mode, report=lambda m, st: rows.append(m),
               grad_accum=s.grad_accum, grad_clip=float("inf"), train_stats=s.train_stats)
    assert any(not torch.equal(a, b) for a, b in zip(start, params))  # it did train
    return s, rows, params


def _same(whole, micro, keys):
    (_, rows_a, params_a), (s, rows_b, params_b) = whole, micro
    assert isinstance(s.loss_fn, MicroBatched)  # the micro-batched path ran
    for a, b in zip(rows_a, rows_b):
        for k in keys:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k
    for a, b in zip(params_a, params_b):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunks_are_weighted_by_what_the_loss_averages_over():
    batch = {"x": torch.arange(7), "labels": torch.tensor([1, 2, 3, 0, 0, 0, 4])}
    rows = MicroBatched(lambda m, b: None, 3)
    parts = rows.chunks(batch)
    assert [len(p["x"]) for p, _ in parts] == [3, 2, 2]  # equal chunks of at most 3 rows
    assert [s for _, s in parts] == pytest.approx([3 / 7, 2 / 7, 2 / 7])
    tokens = MicroBatched(lambda m, b: None, 3, weight=lambda b: int((b["labels"] != 0).sum()))
    parts = tokens.chunks(batch)  # the middle chunk has nothing to average: left out
    assert [p["x"].tolist() for p, _ in parts] == [[0, 1, 2], [5, 6]]
    assert [s for _, s in parts] == pytest.approx([3 / 4, 1 / 4])
    assert MicroBatched(lambda m, b: None, 8).chunks(batch) == [(batch, 1.0)]
    plain = lambda m, b: None  # noqa: E731
    assert micro_batched(plain, 0) is plain


def _classification(n=60, seed=0) -> ClassificationData:
    """Label 1 iff the sentence holds token 7; sentences of 3-8 tokens (padding differs)."""
    rng = np.random.default_rng(seed)
    ids, labels = [], np.arange(n) % 2
    for y in labels:
        seq = rng.integers(10, 60, size=rng.integers(3, 9)).astype(np.int32)
        if y:
            seq[rng.integers(len(seq))] = 7
        ids.append(seq)
    idx = np.arange(n)
    return ClassificationData(train_ids=ids, train_labels=labels, fit_idx=idx[:50],
                              select_idx=idx[50:], dev_ids=ids[50:], dev_labels=labels[50:],
                              dev_groups=None, pad_token_id=0, origin="toy")


def test_cola_micro_batches_train_as_the_whole_batch(tiny_model):
    from models.cola_lora import ColaLoraConfig, setup

    data = _classification()
    # 50 rows in batches of 16 (the last of 2, run whole): chunks of 6, 5 and 5 rows
    runs = [_train(setup, ColaLoraConfig(model=tiny_model, lora_dropout=0.0, batch_size=16,
                                         micro_batch_size=m, max_epochs=2), data)
            for m in (0, 6)]
    _same(*runs, ("train_loss", "train_accuracy", "train_mcc", "val_loss", "val_mcc"))


@pytest.fixture(scope="module")
def sum_data(tmp_path_factory):
    from models.hf import load_tokenizer
    from models.tiny import build_tiny_gpt2

    texts = [t for pair in synthetic_articles().train for t in pair] + [SEP] * 5
    lm = build_tiny_gpt2(tmp_path_factory.mktemp("lm") / "m", texts, vocab_size=300)
    data = tokenize_articles(synthetic_articles(), load_tokenizer(lm), separator=SEP,
                             max_source_tokens=40, max_target_tokens=40, max_train_samples=26,
                             max_eval_samples=8)
    return lm, data


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_summarization_micro_batches_train_as_the_whole_batch(method, sum_data):
    """A token mean: the chunks' summaries differ in length, so weighting chunks by rows (or
    equally) would give other gradients; with accumulation over two batches on top."""
    lm, data = sum_data
    if method == "lora":
        from models.summarize_lora import SumLoraConfig as Config, setup
        extra = {"lora_dropout": 0.0}
    else:
        from models.summarize_prompt import SumPromptConfig as Config, setup
        extra = {"num_virtual_tokens": 4}
    runs = [_train(setup, Config(model=lm, batch_size=6, grad_accum=2, micro_batch_size=m,
                                 max_epochs=2, group_by_length=False, **extra), data)
            for m in (0, 4)]
    _same(*runs, ("train_loss", "val_loss"))
    s = runs[1][0]  # the chunks' token shares are not their row shares (else rows would pass)
    assert any(len({round(share, 6) for _, share in s.loss_fn.chunks(b)}) > 1
               for b in s.train_batches(1))


def test_summary_tokens_is_what_the_loss_divides_by(sum_data):
    from models.data.cnndm import lm_batches
    from models.summarize import summary_loss, summary_tokens
    from models.summarize_lora import SumLoraConfig, build_model

    lm, data = sum_data
    torch.manual_seed(0)
    model = build_model(SumLoraConfig(model=lm), data).eval()
    batch = next(lm_batches(data.train[:5], batch_size=5, pad_id=data.pad_token_id))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE,
        reduction="sum")
    assert (summary_loss(model, batch) * summary_tokens(batch)).item() == \
        pytest.approx(total.item(), rel=1e-5)
