#!/usr/bin/env python
"""What does distillation add to a student's trial? Side by side, same student, same data:

  scratch    kd_fraction = 1 (plain cross-entropy)
  KD         our way: teacher logits computed once per sweep, read from memory per batch
  online KD  the reference approach: the teacher runs on every batch of every epoch

Each runs the shared training loop for --epochs epochs on one thread. Prints the time ratios
KD / scratch (goal <= 1.1) and online / KD, and the one-off teacher pass our way pays per
sweep. The teacher is a tiny GPT-2 classifier built in-process (--teacher-layers/--teacher-dim
make it bigger; a real teacher is far larger, which only widens the online gap).

    python bench/kd_trial_cost.py [--data-dir ../shared/data/cola_public] [--epochs 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="CoLA directory (default: generated set)")
    p.add_argument("--max-train-samples", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--teacher-layers", type=int, default=2)
    p.add_argument("--teacher-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    from search.output import quiet_libraries

    quiet_libraries()
    import torch
    from transformers import AutoModelForSequenceClassification

    from models.data.classification import tokenize_splits
    from models.data.cola import load_cola_dir, synthetic_cola
    from models.cola_kd import ColaKDConfig, KDData, setup
    from models.hf import load_tokenizer
    from models.kd_loss import kd_loss
    from models.loop import build_optimizer, train_loop
    from models.teacher import teacher_logits
    from models.tiny import build_tiny_gpt2

    torch.set_num_threads(args.threads)
    splits = load_cola_dir(args.data_dir) if args.data_dir else synthetic_cola(n_train=4000)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_gpt2(Path(tmp) / "t", splits.train_text[:2000], vocab_size=2000,
                               n_layer=args.teacher_layers, n_embd=args.teacher_dim)
        tok = load_tokenizer(path)
        teacher = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=2, pad_token_id=tok.pad_token_id).eval()
    data = tokenize_splits(splits, tok, selection_fraction=0.1, seed=0,
                         max_train_samples=args.max_train_samples)
    t0 = time.perf_counter()
    both, _ = teacher_logits(teacher, data.train_ids + data.dev_ids, pad_id=data.pad_token_id)
    teacher_pass_s = time.perf_counter() - t0
    n = len(data.train_ids)
    kd_data = KDData(cola=data, teacher_train=both[:n], teacher_dev=both[n:], vocab_size=len(tok))

    def run(cfg: ColaKDConfig, online: bool) -> float:
        torch.manual_seed(0)
        s = setup(cfg, kd_data, "cpu")

        def online_loss(m, batch):  # the reference: teacher forward on every batch
            with torch.no_grad():
                t_logits = teacher(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"]).logits
            return kd_loss(m(batch["input_ids"], batch["attention_mask"]), t_logits,
                           batch["labels"], fraction=cfg.kd_fraction,
                           temperature=cfg.kd_temperature)

        loss_fn = online_loss if online else s.loss_fn
        opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                     total_steps=s.steps_per_epoch * cfg.max_epochs,
                                     warmup_ratio=0.06)
        t = time.perf_counter()
        train_loop(model=s.model, optimizer=opt, scheduler=sched, loss_fn=loss_fn,
                   train_batches=s.train_batches, evaluate=s.evaluate, max_epochs=cfg.max_epochs,
                   best_metric=s.best_metric, report=lambda m, st: None)
        return time.perf_counter() - t

    base = dict(max_epochs=args.epochs, batch_size=64, embed_dim=128, hidden_size=128)
    kd_cfg = ColaKDConfig(kd_fraction=0.5, kd_temperature=2.0, **base)
    run(ColaKDConfig(kd_fraction=1.0, **base), online=False)  # warm-up (allocator, kernels)
    times = {"scratch": run(ColaKDConfig(kd_fraction=1.0, **base), online=False),
             "KD (precomputed)": run(kd_cfg, online=False),
             "online KD (reference)": run(kd_cfg, online=True)}
    print(f"\n{len(data.fit_idx)} training sentences, {args.epochs} epochs, GRU 128/128, batch 64, "
          f"{args.threads} thread(s); teacher {sum(p.numel() for p in teacher.parameters()):,} params")
    for k, v in times.items():
        print(f"{k:<24} {v:7.2f} s")
    print(f"one-off teacher pass (train + dev, per sweep): {teacher_pass_s:.2f} s")
    print(f"online KD / precomputed KD: {times['online KD (reference)'] / times['KD (precomputed)']:.2f}")
    print(f"KD / scratch time ratio: {times['KD (precomputed)'] / times['scratch']:.3f}")


if __name__ == "__main__":
    main()
