#!/usr/bin/env python
"""How close is one training epoch to the hardware's limit, and to the HF Trainer?

For one model + LoRA adapter on CoLA's training set, times one epoch (training only, no
evaluation) side by side in one process:
  - our loop as it was: plain shuffled batches (per-batch padding), torch's default AdamW;
  - + fused AdamW; + length-grouped batches (each change on its own, then both); then + the
    cheaper CPU dropout of models.dropout (ours now: what a CPU trial runs);
  - optionally (--compile) ours now with torch.compile;
  - the HF Trainer with the same model, adapter, batch size and data: default settings, then
    train_sampling_strategy="group_by_length".
Prints samples/s, each against the Trainer default, and our epoch over the FLOP floor: the
forward and input-gradient matmuls over the real (unpadded) tokens, counted from the model's
shapes, at the fp32 matmul rate measured in the same run. Then evaluation of the dev split
(length-sorted large batches under inference_mode against unsorted training-size batches), the
GRU student of the distillation study (packed against padded sequences, grouped against plain
batches), and the summarization loop (GPT-2 + LoRA on CNN/DailyMail articles, ours against
plain: grouped against shuffled batches, CPU dropout against torch's, sorted against unsorted
evaluation). The epoch rows run one after another, so the machine's drift shows in them (10-15 %
between runs on a shared host); the dropout change is also timed as an interleaved A/B on the
same batches (``--dropout-ab-only`` runs just that).

    python bench/train_throughput.py --model <dir of a local HF model> --data-dir <CoLA dir>
    python bench/train_throughput.py            # tiny GPT-2 built in-process, generated data
    ... --cnndm-dir <CNN/DM CSV dir> [--sum-model <local causal LM dir>]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def matmul_rate(seconds: float = 3.0, n: int = 1024) -> float:
    """fp32 FLOP/s of square matmuls at the current thread count (best of repeated runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n**3 / best


def matmul_shapes(model) -> tuple[int, int, int]:
    """(weights in linear maps excluding embeddings and the head, layers, hidden size)."""
    from transformers.pytorch_utils import Conv1D

    n = 0
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, Conv1D)) and "lora_" not in name \
                and not name.endswith(("classifier", "score", "classifier.original_module",
                                       "score.original_module", "modules_to_save.default")):
            n += m.weight.numel()
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    return n, layers, hidden


def floor_flops(lengths: np.ndarray, n_weights: int, layers: int, hidden: int) -> float:
    """Forward + input-gradient FLOPs of one epoch over the real tokens: per sequence of T
    tokens, 2*N*T for the linear maps and 4*layers*hidden*T^2 for attention scores and mixing,
    twice (the frozen base needs no weight gradients; LoRA's are negligible)."""
    t = lengths.astype(np.float64)
    forward = 2 * n_weights * t.sum() + 4 * layers * hidden * (t**2).sum()
    return 2 * forward


def load(args, tmp: Path):
    from models.data.classification import tokenize_splits
    from models.data.cola import load_cola_dir, synthetic_cola
    from models.hf import load_tokenizer

    splits = load_cola_dir(args.data_dir) if args.data_dir else synthetic_cola(n_train=2000)
    model = args.model
    if model is None:
        from models.tiny import build_tiny_gpt2

        model = build_tiny_gpt2(tmp / "tiny", splits.train_text + splits.dev_text,
                                n_layer=2, n_embd=64, n_head=2)
    tok = load_tokenizer(model)
    data = tokenize_splits(splits, tok, selection_fraction=0.1, seed=0,
                         max_train_samples=args.max_train_samples)
    return model, tok, data


def ours(args, model_name, data, *, group: bool, fused: bool, cpu_dropout: bool,
         compile: bool = False) -> float:
    """One epoch of the shared loop through the study's own setup, as the trial harness runs
    it (``cpu_dropout``: models.dropout swapped in, as trials on a CPU do); returns training
    seconds."""
    from models.cola_lora import ColaLoraConfig, setup
    from models.dropout import use_cpu_dropout
    from models.loop import build_optimizer, train_loop
    from models.trial import seed_everything

    seed_everything(0)
    cfg = ColaLoraConfig(model=model_name, batch_size=args.batch_size, lora_r=args.lora_r,
                         lora_alpha=2 * args.lora_r, learning_rate=args.learning_rate,
                         max_epochs=1, stage="retrain", group_by_length=group, compile=compile)
    s = setup(cfg, data, "cpu")
    if cpu_dropout and not compile:
        use_cpu_dropout(s.model)
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                 total_steps=s.steps_per_epoch, warmup_ratio=cfg.warmup_ratio,
                                 fused=fused)
    model = torch.compile(s.model, dynamic=True) if compile else s.model
    out = {}
    train_loop(model=model, optimizer=opt, scheduler=sched, loss_fn=s.loss_fn,
               train_batches=s.train_batches, evaluate=lambda m: {"none": 0.0},
               max_epochs=1, best_metric="none", report=lambda m, st: out.update(m))
    return out["train_s"]


def dropout_ab(args, model_name, data, *, rounds: int = 3, steps: int = 40) -> tuple[float, float]:
    """(ms per training step with torch's dropout, with models.dropout.CpuDropout): one model,
    the same grouped batches, the two dropouts swapped in turn for ``rounds`` rounds; best round
    of each. Interleaving keeps the machine's drift (which moves a whole epoch by 10-15 % from
    one run to the next on a shared host) out of the comparison."""
    import itertools

    from models.cola_lora import ColaLoraConfig, setup
    from models.dropout import CpuDropout, dropout_slots
    from models.loop import build_optimizer
    from models.trial import seed_everything

    seed_everything(0)
    cfg = ColaLoraConfig(model=model_name, batch_size=args.batch_size, lora_r=args.lora_r,
                         lora_alpha=2 * args.lora_r, learning_rate=args.learning_rate,
                         max_epochs=1, stage="retrain", group_by_length=True)
    s = setup(cfg, data, "cpu")
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                 total_steps=rounds * 2 * steps + 5, warmup_ratio=0.0)
    batches = list(itertools.islice(iter(s.train_batches(1)), steps))
    slots = dropout_slots(s.model)
    cheap = {id(c): CpuDropout(c.p) for _, _, c in slots}
    s.model.train()

    def step(b):
        loss = s.loss_fn(s.model, b)
        (loss[0] if isinstance(loss, tuple) else loss).backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:5]:
        step(b)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for use in (False, True):
            for parent, name, child in slots:
                setattr(parent, name, cheap[id(child)] if use else child)
            t = time.perf_counter()
            for b in batches:
                step(b)
            best[use] = min(best[use], (time.perf_counter() - t) / len(batches) * 1e3)
    return best[False], best[True]


def hf_trainer(args, model_name, tok, data, *, strategy: str, tmp: Path) -> float:
    """One epoch of transformers' Trainer on the same model, adapter, batches and data."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from models.cola_lora import ColaLoraConfig, build_lora_model
    from models.trial import seed_everything

    seed_everything(0)
    cfg = ColaLoraConfig(model=model_name, batch_size=args.batch_size, lora_r=args.lora_r,
                         lora_alpha=2 * args.lora_r, learning_rate=args.learning_rate)
    model = build_lora_model(cfg, pad_token_id=data.pad_token_id)
    ids, labels = data.split("train")
    ds = datasets.Dataset.from_dict({"input_ids": [x.tolist() for x in ids],
                                     "attention_mask": [[1] * len(x) for x in ids],
                                     "labels": labels.tolist()})
    targs = TrainingArguments(output_dir=str(tmp / f"trainer-{strategy}"), use_cpu=True,
                              per_device_train_batch_size=args.batch_size, num_train_epochs=1,
                              learning_rate=args.learning_rate,
                              warmup_steps=int(0.06 * -(-len(ids) // args.batch_size)),
                              save_strategy="no", report_to="none", disable_tqdm=True,
                              train_sampling_strategy=strategy, seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=ds,
                      data_collator=DataCollatorWithPadding(tok))
    t = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t


def eval_time(model_name, data, args, *, sorted_large: bool) -> float:
    """Seconds to score the dev split: our evaluator (length-sorted, batch 256, inference
    mode) or the plain way (split order, training batch size, no_grad)."""
    from models.data.batching import classification_batches
    from models.classify import make_evaluator
    from models.cola_adapter import forward as _forward
    from models.cola_lora import ColaLoraConfig, build_lora_model

    cfg = ColaLoraConfig(model=model_name, lora_r=args.lora_r)
    model = build_lora_model(cfg, pad_token_id=data.pad_token_id).eval()
    t = time.perf_counter()
    if sorted_large:
        make_evaluator(data, {"dev": "dev"}, forward=_forward)(model)
    else:
        ids, labels = data.split("dev")
        with torch.no_grad():
            for b in classification_batches(ids, labels, batch_size=args.batch_size,
                                            pad_id=data.pad_token_id):
                _forward(model, b).argmax(-1).tolist()  # a sync per batch, as a plain loop does
    return time.perf_counter() - t


def student_epoch(data, args, *, packed: bool, group: bool) -> float:
    """One KD epoch of the GRU student (teacher logits: fixed random stand-ins, timing only)."""
    from models.data.batching import classification_batches
    from models.kd_loss import kd_loss
    from models.loop import build_optimizer, train_loop
    from models.student import GRUStudent

    torch.manual_seed(0)
    ids, labels = data.split("train")
    vocab = int(max(int(x.max()) for x in ids)) + 1
    model = GRUStudent(vocab_size=vocab, embed_dim=args.student_dim,
                       hidden_size=args.student_dim, pad_token_id=data.pad_token_id)
    soft = np.random.default_rng(0).normal(size=(len(ids), 2)).astype(np.float32)

    def forward(m, b):
        if not packed:  # the student's own path (one direction): padded, gathered at the end
            return m(b["input_ids"], b["attention_mask"])
        from torch.nn.utils.rnn import pack_padded_sequence

        seq = pack_padded_sequence(m.embed(b["input_ids"]), b["attention_mask"].sum(1),
                                   batch_first=True, enforce_sorted=False)
        _, h_n = m.gru(seq)  # [1, B, H] at each true end
        return m.head(h_n[-1])

    steps = -(-len(ids) // args.batch_size)
    opt, sched = build_optimizer(model, learning_rate=1e-3, weight_decay=0.0,
                                 total_steps=steps, warmup_ratio=0.0)
    out = {}
    train_loop(model=model, optimizer=opt, scheduler=sched,
               loss_fn=lambda m, b: kd_loss(forward(m, b), b["teacher_logits"], b["labels"],
                                            fraction=0.5, temperature=2.0),
               train_batches=lambda e: classification_batches(
                   ids, labels, batch_size=args.batch_size, pad_id=data.pad_token_id,
                   shuffle_seed=e, group_by_length=group, extra={"teacher_logits": soft}),
               evaluate=lambda m: {"none": 0.0}, max_epochs=1, best_metric="none",
               report=lambda m, st: out.update(m))
    return out["train_s"]


def summarize_parts(args, tmp: Path):
    """SumData and a causal LM for the summarization section (tiny GPT-2 by default)."""
    from models.data.cnndm import SEPARATOR, load_cnndm_dir, synthetic_articles, tokenize_articles
    from models.hf import load_tokenizer

    arts = (load_cnndm_dir(args.cnndm_dir, seed=0) if args.cnndm_dir
            else synthetic_articles(n=400))
    model = args.sum_model
    if model is None:
        from models.tiny import build_tiny_gpt2

        texts = [a for a, _ in arts.train] + [h for _, h in arts.train]
        model = build_tiny_gpt2(tmp / "tiny-lm", texts + [SEPARATOR] * 20, vocab_size=600,
                                n_layer=2, n_embd=64, n_head=2, n_positions=512)
    tok = load_tokenizer(model)
    data = tokenize_articles(arts, tok, separator=SEPARATOR, max_source_tokens=args.sum_source,
                             max_target_tokens=64)
    return model, data


def summarize_epoch(model_name, data, args, *, group: bool) -> tuple[float, float]:
    """(training seconds of one LoRA epoch, seconds of the validation loss) through the
    study's own setup: ours (grouped, CPU dropout, sorted evaluation) or the plain variant
    (shuffled, torch's dropout, evaluation in split order)."""
    from models.data.cnndm import lm_batches
    from models.dropout import use_cpu_dropout
    from models.loop import build_optimizer, train_loop
    from models.summarize import setup
    from models.summarize_lora import SumLoraConfig, build_model
    from models.trial import seed_everything

    seed_everything(0)
    cfg = SumLoraConfig(model=model_name, batch_size=8, max_epochs=1, group_by_length=group)
    s = setup(cfg, data, "cpu", build_model=build_model)
    if group:  # ours: as a CPU trial runs it
        use_cpu_dropout(s.model)
    steps = -(-len(data.train) // cfg.batch_size)
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                 total_steps=steps, warmup_ratio=cfg.warmup_ratio)
    out = {}
    train_loop(model=s.model, optimizer=opt, scheduler=sched, loss_fn=s.loss_fn,
               train_batches=s.train_batches, evaluate=lambda m: {"none": 0.0},
               max_epochs=1, best_metric="none", report=lambda m, st: out.update(m))
    s.model.eval()
    t = time.perf_counter()
    if group:
        s.evaluate(s.model)
    else:
        with torch.no_grad():
            for b in lm_batches(data.validation, batch_size=cfg.batch_size, pad_id=data.pad_token_id):
                s.model(**b).loss.item()  # a sync per batch, as a plain loop does
    return out["train_s"], time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="local HF model directory (default: a tiny GPT-2 built in-process)")
    p.add_argument("--data-dir", default=None, help="CoLA directory (default: generated data)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    p.add_argument("--student-dim", type=int, default=128)
    p.add_argument("--skip-trainer", action="store_true")
    p.add_argument("--cnndm-dir", default=None,
                   help="CNN/DM CSV dir for the summarization section (default: generated)")
    p.add_argument("--sum-model", default=None,
                   help="local causal LM for the summarization section (default: tiny GPT-2)")
    p.add_argument("--sum-source", type=int, default=256, help="summarization: article tokens")
    p.add_argument("--dropout-ab-only", action="store_true",
                   help="only the interleaved A/B of torch's dropout against models.dropout")
    args = p.parse_args()

    from search.output import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="throughput-"))
    model_name, tok, data = load(args, tmp)
    ids, _ = data.split("train")
    lengths = np.array([len(x) for x in ids])
    n = len(ids)
    print(f"model {model_name}; {n} training sentences, {lengths.sum()} tokens "
          f"(mean {lengths.mean():.1f}, max {lengths.max()}); batch {args.batch_size}; "
          f"{torch.get_num_threads()} threads", flush=True)

    def report_ab():
        torch_ms, cpu_ms = dropout_ab(args, model_name, data)
        print(f"\ndropout A/B (same batches, interleaved, best of 3 rounds of 40 steps): torch "
              f"{torch_ms:.1f} ms/step, CpuDropout {cpu_ms:.1f} ms/step: {torch_ms / cpu_ms:.2f}x",
              flush=True)
        return torch_ms, cpu_ms

    if args.dropout_ab_only:
        report_ab()
        return

    rate = matmul_rate()
    from models.cola_lora import ColaLoraConfig, build_lora_model

    probe = build_lora_model(ColaLoraConfig(model=model_name, lora_r=args.lora_r),
                             pad_token_id=data.pad_token_id)
    n_w, layers, hidden = matmul_shapes(probe)
    floor_s = floor_flops(lengths, n_w, layers, hidden) / rate
    print(f"fp32 matmul rate {rate / 1e9:.1f} GFLOP/s; {n_w / 1e6:.2f} M matmul weights, "
          f"{layers} layers, hidden {hidden}: FLOP floor {floor_s:.1f} s per epoch", flush=True)

    rows = []

    def add(name, seconds):
        rows.append((name, seconds))
        print(f"  {name:<44} {seconds:7.1f} s  {n / seconds:7.1f} samples/s", flush=True)

    plain = dict(model_name=model_name, data=data, cpu_dropout=False)
    add("ours before: shuffled, default AdamW", ours(args, **plain, group=False, fused=False))
    add("ours + fused AdamW", ours(args, **plain, group=False, fused=True))
    add("ours + length grouping", ours(args, **plain, group=True, fused=False))
    add("ours + grouping + fused AdamW", ours(args, **plain, group=True, fused=True))
    add("ours now: + CPU dropout (models.dropout)",
        ours(args, model_name, data, group=True, fused=True, cpu_dropout=True))
    now = rows[-1][1]
    if args.compile:
        add("ours now + torch.compile (incl. compiling)",
            ours(args, model_name, data, group=True, fused=True, cpu_dropout=False, compile=True))
    if not args.skip_trainer:
        add("HF Trainer default", hf_trainer(args, model_name, tok, data, strategy="random", tmp=tmp))
        add("HF Trainer group_by_length",
            hf_trainer(args, model_name, tok, data, strategy="group_by_length", tmp=tmp))

    ab = report_ab()

    print("\nevaluation of the dev split:", flush=True)
    ev_plain = eval_time(model_name, data, args, sorted_large=False)
    ev_ours = eval_time(model_name, data, args, sorted_large=True)
    print(f"  plain (split order, batch {args.batch_size}, no_grad)   {ev_plain:6.2f} s", flush=True)
    print(f"  ours (length-sorted, batch 256, inference_mode) {ev_ours:6.2f} s "
          f"({ev_plain / ev_ours:.2f}x)", flush=True)

    print("\nGRU student (KD loss), one epoch:", flush=True)
    student = {}
    for packed in (False, True):
        for group in (False, True):
            student[(packed, group)] = s = student_epoch(data, args, packed=packed, group=group)
            print(f"  {'packed' if packed else 'padded':<7} {'grouped' if group else 'shuffled':<9}"
                  f" {s:6.2f} s  {n / s:7.1f} samples/s", flush=True)

    print("\nsummarization (GPT-2 + LoRA, batch 8), one epoch + validation loss:", flush=True)
    sum_model, sum_data = summarize_parts(args, tmp)
    lens = np.array([len(e.input_ids) for e in sum_data.train])
    print(f"  {len(lens)} training articles, tokens mean {lens.mean():.0f}, min {lens.min()}, "
          f"max {lens.max()}", flush=True)
    summ = {}
    for group in (False, True):
        summ[group] = tr, ev = summarize_epoch(sum_model, sum_data, args, group=group)
        print(f"  {'ours' if group else 'plain':<6} train {tr:6.2f} s"
              f" ({len(lens) / tr:6.1f} samples/s), eval {ev:5.2f} s", flush=True)
    print(f"  ours vs plain: train {summ[False][0] / summ[True][0]:.2f}x, "
          f"eval {summ[False][1] / summ[True][1]:.2f}x", flush=True)

    by = dict(rows)
    summary = {"train_samples": n, "floor_s": floor_s, "matmul_gflops": rate / 1e9,
               **{k: v for k, v in rows}, "dropout_ab_ms": ab, "eval_plain_s": ev_plain, "eval_ours_s": ev_ours,
               "student_s": {f"{'packed' if k[0] else 'padded'}-{'grouped' if k[1] else 'shuffled'}": v
                             for k, v in student.items()},
               "summarize_s": {"shuffled": summ[False], "grouped": summ[True]}}
    (tmp / "throughput.json").write_text(json.dumps(summary, indent=1))
    print(f"\n(all figures: {tmp / 'throughput.json'})")
    print(f"ours now vs ours before: {by['ours before: shuffled, default AdamW'] / now:.2f}x")
    if not args.skip_trainer:
        print(f"ours now vs HF Trainer default: {by['HF Trainer default'] / now:.2f}x; "
              f"vs Trainer group_by_length: {by['HF Trainer group_by_length'] / now:.2f}x")
    print(f"ours now over the FLOP floor: {now / floor_s:.2f}x")


if __name__ == "__main__":
    main()
