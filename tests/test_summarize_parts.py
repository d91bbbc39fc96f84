"""Summarization pieces: the Kaggle CSV loader, label masking, per-method trainable counts,
token-weighted eval loss, ROUGE, checkpoint round trips; and the loop's gradient
accumulation, patience and keep-best used by this study."""
import pytest
import torch

from conftest import REPO
from models.data.cnndm import (IGNORE, Articles, encode_example, lm_batches, load_cnndm_dir,
                               prompt_batches, read_cnndm_csv, synthetic_articles,
                               separator_ids, tokenize_articles)
from models.errors import InputError
from models.loop import LoopState, train_loop

SHARED_CNNDM = REPO.parent / "shared" / "data" / "cnn_dailymail"
SEP = " TL;DR: "  # a trailing space, as a user may type it: dropped


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from models.tiny import build_tiny_gpt2

    texts = [t for pair in synthetic_articles().train for t in pair] + [SEP] * 5
    return build_tiny_gpt2(tmp_path_factory.mktemp("lm") / "m", texts, vocab_size=300)


@pytest.fixture(scope="module")
def tok(lm_dir):
    from models.hf import load_tokenizer

    return load_tokenizer(lm_dir)


@pytest.fixture(scope="module")
def data(tok):
    return tokenize_articles(synthetic_articles(), tok, separator=SEP, max_source_tokens=40,
                             max_target_tokens=12, rouge_samples=4)


def write_csv(path, rows, header=",id,article,highlights"):
    """Kaggle layout: unnamed index column, CRLF line endings, quoted multi-line fields."""
    lines = [header] + [f'{i},id{i},"{a}","{h}"' for i, (a, h) in enumerate(rows)]
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    return path


# --- loading ----------------------------------------------------------------------------------
def test_kaggle_csv_multiline_crlf(tmp_path):
    rows = [("First line.\r\nSecond line of the article.", "Point one .\nPoint two ."),
            ("Another, with a comma.", "Short.")]
    got, dropped = read_cnndm_csv(write_csv(tmp_path / "t.csv", rows), max_empty_fraction=0.0)
    assert dropped == 0 and len(got) == 2
    assert got[0][0].startswith("First line.") and "Second line" in got[0][0]
    assert got[0][1] == "Point one .\nPoint two ."


def test_single_csv_split_is_deterministic(tmp_path):
    rows = [(f"article {i}", f"summary {i}") for i in range(50)]
    write_csv(tmp_path / "only.csv", rows)
    a, b = load_cnndm_dir(str(tmp_path), seed=3), load_cnndm_dir(str(tmp_path), seed=3)
    assert (len(a.train), len(a.validation), len(a.test)) == (40, 5, 5)
    assert a.train == b.train and a.test == b.test
    everything = sorted(a.train + a.validation + a.test)
    assert everything == sorted(rows)  # disjoint and complete
    assert load_cnndm_dir(str(tmp_path), seed=4).test != a.test


def test_three_file_layout(tmp_path):
    for name, n in (("train", 6), ("validation", 2), ("test", 3)):
        write_csv(tmp_path / f"{name}.csv", [(f"{name} a{i}", f"{name} s{i}") for i in range(n)])
    a = load_cnndm_dir(str(tmp_path), seed=0)
    assert (len(a.train), len(a.validation), len(a.test)) == (6, 2, 3)
    assert a.test[0] == ("test a0", "test s0")


def test_missing_column_is_named(tmp_path):
    p = write_csv(tmp_path / "bad.csv", [("a", "b")], header=",id,article,summary")
    with pytest.raises(InputError, match="missing required column 'highlights'"):
        read_cnndm_csv(p, max_empty_fraction=0.01)


def test_empty_rows_threshold(tmp_path):
    rows = [(f"a{i}", f"s{i}") for i in range(18)] + [("", "s"), ("a", " ")]
    p = write_csv(tmp_path / "e.csv", rows)
    with pytest.raises(InputError, match="2 of 20 rows have an empty article or highlights"):
        read_cnndm_csv(p, max_empty_fraction=0.05)
    got, dropped = read_cnndm_csv(p, max_empty_fraction=0.1)
    assert dropped == 2 and len(got) == 18


def test_shared_sample_loads():
    if not (SHARED_CNNDM / "train_sample.csv").is_file():
        pytest.skip("CNN/DailyMail sample not present")
    a = load_cnndm_dir(str(SHARED_CNNDM), seed=0)
    assert (len(a.train), len(a.validation), len(a.test), a.dropped) == (80, 10, 10, 0)
    assert all(art and summ for art, summ in a.train)
    assert any("\n" in summ for _, summ in a.train)  # highlights keep their line breaks


# --- formatting and masking -----------------------------------------------------------------
def test_labels_cover_summary_tokens_only(tok, data):
    article, summary = synthetic_articles().train[0]
    ex = encode_example(tok, article, summary, sep=separator_ids(tok, SEP),
                        max_source_tokens=40, max_target_tokens=12)
    src = tok(article, add_special_tokens=False)["input_ids"][:40]
    sep = tok(SEP.rstrip(" "), add_special_tokens=False)["input_ids"]
    assert tok.decode(sep) == " TL;DR:"
    tgt = tok(" " + summary, add_special_tokens=False)["input_ids"][:12]
    assert ex.prompt_len == len(src) + len(sep)
    assert ex.input_ids.tolist() == src + sep + tgt + [tok.eos_token_id]

    examples = data.train[:5]
    batch = next(lm_batches(examples, batch_size=5, pad_id=tok.pad_token_id))
    labels, mask = batch["labels"].numpy(), batch["attention_mask"].numpy()
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        assert (labels[row, : e.prompt_len] == IGNORE).all()  # article + separator
        assert (labels[row, n:] == IGNORE).all() and (mask[row, n:] == 0).all()  # padding
        assert labels[row, e.prompt_len:n].tolist() == e.input_ids[e.prompt_len:].tolist()
        # loss-bearing tokens = the (truncated) summary's tokens + its EOS
        summary_tokens = n - e.prompt_len - 1
        assert (labels[row] != IGNORE).sum() == summary_tokens + 1
    assert labels.shape[1] == max(len(e.input_ids) for e in examples)  # dynamic padding


def test_prompt_batches_are_left_padded(data, tok):
    examples = data.test[:3]
    b = next(prompt_batches(examples, batch_size=3, pad_id=tok.pad_token_id))
    for row, e in enumerate(examples):
        assert b["input_ids"][row, -e.prompt_len:].tolist() == e.input_ids[: e.prompt_len].tolist()
        assert b["attention_mask"][row].sum() == e.prompt_len


# --- methods ----------------------------------------------------------------------------------
def test_prompt_tuning_trains_only_the_soft_prompt(lm_dir, data):
    from models.summarize_prompt import SumPromptConfig, build_model

    for n in (5, 20):
        model = build_model(SumPromptConfig(model=lm_dir, num_virtual_tokens=n), data)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == n * 32  # num_virtual_tokens x n_embd


def test_last_layers_unfreezes_top_blocks_and_final_norm(lm_dir, data):
    from models.summarize_last_layers import SumLastLayersConfig, build_model

    model = build_model(SumLastLayersConfig(model=lm_dir, n_last_layers=1), data)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("transformer.h.1.", "transformer.ln_f.")) for n in names)
    assert not model.transformer.wte.weight.requires_grad  # the tied head stays frozen
    assert model.lm_head.weight is model.transformer.wte.weight
    block = sum(p.numel() for p in model.transformer.h[1].parameters())
    norm = sum(p.numel() for p in model.transformer.ln_f.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == block + norm
    with pytest.raises(ValueError, match="the model has 2 blocks"):
        build_model(SumLastLayersConfig(model=lm_dir, n_last_layers=4), data)


@pytest.mark.parametrize("method", ["prompt", "lora", "last_layers"])
def test_checkpoint_round_trip(method, lm_dir, data, tmp_path):
    import importlib

    from models.registry import get_study
    from models.summarize import setup

    mod = importlib.import_module(f"models.summarize_{method}")
    cfg_cls = get_study(f"cnndm_{method}").config_cls
    torch.manual_seed(0)
    a = setup(cfg_cls(model=lm_dir), data, "cpu", build_model=mod.build_model)
    with torch.no_grad():
        for p in a.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    a.save_weights(str(tmp_path))
    torch.manual_seed(1)
    b = setup(cfg_cls(model=lm_dir), data, "cpu", build_model=mod.build_model)
    b.load_weights(str(tmp_path))
    va, vb = a.evaluate(a.model.eval()), b.evaluate(b.model.eval())
    assert va["val_loss"] == pytest.approx(vb["val_loss"], rel=1e-6)


def test_eval_loss_is_token_weighted_mean(lm_dir, data):
    import torch.nn.functional as F

    from models.summarize import token_weighted_loss
    from models.summarize_lora import SumLoraConfig, build_model

    model = build_model(SumLoraConfig(model=lm_dir), data).eval()
    examples = data.validation[:7]
    got = token_weighted_loss(model, examples, batch_size=3, pad_id=data.pad_token_id,
                              device="cpu")
    nll, count = 0.0, 0
    with torch.no_grad():
        for e in examples:  # one at a time, no padding at all
            logits = model(input_ids=torch.from_numpy(e.input_ids)[None]).logits[0]
            target = torch.tensor(e.input_ids[e.prompt_len:])
            pred = logits[e.prompt_len - 1: len(e.input_ids) - 1]
            nll += F.cross_entropy(pred, target, reduction="sum").item()
            count += len(target)
    assert got == pytest.approx(nll / count, rel=1e-4)


def test_rouge_bounds():
    from models.summarize import rouge

    same = rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    none = rouge(["dogs bark loudly"], ["the cat sat"])
    assert none == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    part = rouge(["the cat ran"], ["the cat sat"])
    assert part["rouge1"] == pytest.approx(2 / 3) and part["rouge2"] == pytest.approx(0.5)


def test_generation_stops_at_eos_and_decodes(lm_dir, data):
    from models.summarize import generate_summaries
    from models.summarize_lora import SumLoraConfig, build_model

    model = build_model(SumLoraConfig(model=lm_dir), data).eval()
    with torch.inference_mode():
        out = generate_summaries(model, data, data.test[:3], batch_size=2, device="cpu")
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    # max_target_tokens + EOS new tokens at most
    assert all(len(data.tokenizer(s)["input_ids"]) <= data.max_target_tokens + 1 for s in out)


def test_soft_prompt_generation_is_greedy_decoding_of_prompt_plus_text(lm_dir, data):
    """Each generated token is the argmax after [virtual tokens + article + separator + the
    tokens so far] (peft's forward prepends the soft prompt), and decoding stays within the
    context however many tokens it emits."""
    from models.summarize import generate_summaries
    from models.summarize_prompt import SumPromptConfig, build_model

    torch.manual_seed(0)
    model = build_model(SumPromptConfig(model=lm_dir, num_virtual_tokens=10), data).eval()
    ex = data.test[:2]
    with torch.inference_mode():
        out = generate_summaries(model, data, ex, batch_size=2, device="cpu")
        for e, text in zip(ex, out):
            ids = list(e.input_ids[: e.prompt_len])
            want = []
            for _ in range(data.max_target_tokens + 1):
                nxt = int(model(input_ids=torch.tensor([ids + want])).logits[0, -1].argmax())
                if nxt == data.eos_token_id:
                    break
                want.append(nxt)
            assert text == data.tokenizer.decode(want, skip_special_tokens=True).strip()


# --- the loop features this study uses --------------------------------------------------------
def _toy(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(16, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return model, x, y


def _batches(x, y, bs):
    return lambda epoch: ({"x": x[i:i + bs], "y": y[i:i + bs]} for i in range(0, len(x), bs))


def _mse(m, b):
    return ((m(b["x"]).squeeze(-1) - b["y"]) ** 2).mean()


def _run(bs, accum, epochs=1, evaluate=None, **kw):
    model, x, y = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    rows = []
    state = train_loop(model=model, optimizer=opt, scheduler=sched, loss_fn=_mse,
                       train_batches=_batches(x, y, bs),
                       evaluate=evaluate or (lambda m: {"val_loss": 0.0}), max_epochs=epochs,
                       best_metric="val_loss", mode="min",
                       report=lambda m, s: rows.append(m), grad_accum=accum, **kw)
    return model, rows, state, sched


def test_grad_accumulation_matches_the_large_batch():
    big, _, _, s1 = _run(bs=8, accum=1, epochs=2)
    small, _, _, s2 = _run(bs=4, accum=2, epochs=2)
    for a, b in zip(big.parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert s1.last_epoch == s2.last_epoch == 4  # scheduler counts optimizer steps


def test_patience_stops_and_keep_best_restores():
    scores = iter([3.0, 2.0, 2.5, 2.6, 1.0, 0.5])
    snapshots = []

    def evaluate(m):
        snapshots.append(m.weight.detach().clone())
        return {"val_loss": next(scores)}

    model, rows, state, _ = _run(bs=4, accum=1, epochs=6, evaluate=evaluate, patience=2,
                                 keep_best=True)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # no better score in epochs 3 and 4
    assert rows[-1]["patience_stop"] and rows[-1]["last_epoch"]
    assert not any(r["last_epoch"] for r in rows[:-1])
    assert state.best == 2.0 and state.stopped
    assert torch.equal(model.weight, snapshots[1])  # the epoch-2 weights are back
    assert all(r["train_s"] > 0 and r["peak_mem_mb"] > 0 for r in rows)
    # a resumed, already-stopped run trains no further
    again = train_loop(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       scheduler=None, loss_fn=_mse, train_batches=lambda e: [],
                       evaluate=evaluate, max_epochs=6, best_metric="val_loss", mode="min",
                       report=lambda m, s: pytest.fail("reported"),
                       state=LoopState(**{**vars(state)}))
    assert again.epoch == 4


def test_synthetic_articles_shape():
    a = synthetic_articles(n=40)
    assert isinstance(a, Articles) and len(a.train) + len(a.validation) + len(a.test) == 40
    assert all(art.startswith(summ) and len(art) > len(summ) for art, summ in a.train)  # lead-1
    assert synthetic_articles(n=40).train == a.train  # seeded


# --- the loss on summary positions only, gradient checkpointing, decoding ---------------------
@pytest.mark.parametrize("method", ["lora", "prompt", "last-layers"])
def test_summary_loss_equals_the_full_head_loss(method, lm_dir, data):
    """The LM head applied from the first summary position gives the loss (and gradients) of
    the model's own loss over every position."""
    import importlib

    from models.summarize import summary_loss

    module = importlib.import_module(f"models.summarize_{method.replace('-', '_')}")
    cfg_cls = {"lora": "SumLoraConfig", "prompt": "SumPromptConfig",
               "last-layers": "SumLastLayersConfig"}[method]
    torch.manual_seed(0)
    model = module.build_model(getattr(module, cfg_cls)(model=lm_dir), data).eval()
    batch = next(lm_batches(data.train[:5], batch_size=5, pad_id=data.pad_token_id))
    params = [p for p in model.parameters() if p.requires_grad]
    want = model(**batch).loss
    g_want = torch.autograd.grad(want, params)
    got = summary_loss(model, batch)
    g_got = torch.autograd.grad(got, params)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_got, g_want))


def test_gradient_checkpointing_gives_the_same_gradients(lm_dir, data):
    from models.summarize import setup
    from models.summarize_lora import SumLoraConfig, build_model

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        s = setup(SumLoraConfig(model=lm_dir, gradient_checkpointing=ckpt, lora_dropout=0.0),
                  data, "cpu", build_model=build_model)
        s.model.train()
        batch = next(s.train_batches(0))
        loss = s.loss_fn(s.model, batch)
        loss.backward()
        grads.append([p.grad.clone() for p in s.model.parameters() if p.requires_grad])
    assert s.model.get_base_model().is_gradient_checkpointing
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_beam_search_decoding_respects_length_and_repeats(lm_dir, data):
    from models.summarize import generate_ids
    from models.summarize_lora import SumLoraConfig, build_model

    torch.manual_seed(0)
    model = build_model(SumLoraConfig(model=lm_dir), data).eval()
    with torch.inference_mode():
        greedy = generate_ids(model, data, data.test[:3], batch_size=3, device="cpu")
        out = generate_ids(model, data, data.test[:3], batch_size=3, device="cpu",
                           num_beams=3, no_repeat_ngram_size=2, min_summary_tokens=5)
    # the untrained model repeats itself greedily; the constraint removes every repeat
    assert any(len(set(zip(r, r[1:]))) < len(r) - 1 for r in greedy)
    for ids in out:
        assert 5 <= len(ids) <= data.max_target_tokens + 1  # + the place for EOS
        pairs = list(zip(ids, ids[1:]))
        assert len(pairs) == len(set(pairs)), ids


def test_cached_soft_prompt_decoding_matches_the_uncached_one(lm_dir, data):
    """Prompt tuning decodes with the KV cache (soft prompt fed once as embeddings): greedy and
    beam outputs equal peft's uncached decoding, which re-reads the whole context each step."""
    from models.data.cnndm import prompt_batches
    from models.summarize import generate_ids
    from models.summarize_prompt import SumPromptConfig, build_model

    torch.manual_seed(0)
    model = build_model(SumPromptConfig(model=lm_dir, num_virtual_tokens=6), data).eval()
    ex = sorted(data.test[:4], key=lambda e: e.prompt_len)
    for beams in (1, 3):
        with torch.inference_mode():
            got = generate_ids(model, data, ex, batch_size=4, device="cpu", num_beams=beams,
                               min_summary_tokens=3)
            batch = next(prompt_batches(ex, batch_size=4, pad_id=data.pad_token_id))
            ref = model.generate(**batch, use_cache=False, max_new_tokens=data.max_target_tokens + 1,
                                 do_sample=False, num_beams=beams, min_new_tokens=3,
                                 pad_token_id=data.pad_token_id, eos_token_id=data.eos_token_id)
        width = batch["input_ids"].shape[1]
        want = [r[: r.index(data.eos_token_id)] if data.eos_token_id in r else r
                for r in ref[:, width:].tolist()]
        assert got == want, beams
