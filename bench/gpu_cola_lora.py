#!/usr/bin/env python
"""One CoLA + LoRA configuration retrained on the whole CoLA training set, several seeds, on
one GPU: GLUE dev accuracy and MCC (all, in-domain, out-of-domain) as mean ± sd over seeds,
and seconds per epoch.

What the full training set buys for a configuration a sweep chose on a CPU budget: the
default configuration is the best one of the README's reference table (chosen on a held-out
slice of 2,000 training sentences; dev never chose it). It runs the study's own setup and the
shared loop, as a retrain job does (bf16 autocast, TF32, fused AdamW), without Ray, so it runs
where only torch, transformers and peft are installed. Every epoch is reported; the figure is
the last epoch's (a retrain reports its last epoch too: picking the best epoch on dev would
select on the reported split).

    python bench/gpu_cola_lora.py --model FILE.gguf|HF_DIR --data-dir <CoLA dir> \\
        [--seeds 0 1 2] [--epochs 3] [--out figures.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# The best configuration of the README's reference table (bench/reference_results.py).
REFERENCE_BEST = {"learning_rate": 6.47e-4, "lora_r": 4, "lora_alpha": 16,
                  "lora_dropout": 0.268, "batch_size": 16, "weight_decay": 0.0529}
SPLITS = ("dev", "dev_in", "dev_out")


def train_seed(model_name: str, data, hp: dict, *, seed: int, epochs: int,
               device: torch.device) -> list[dict]:
    """The per-epoch metrics of one retrain of ``hp`` with ``seed``."""
    from models.cola_lora import ColaLoraConfig, setup
    from models.loop import build_optimizer, enable_tf32, train_loop
    from models.trial import release, seed_everything

    seed_everything(seed)
    if device.type == "cuda":
        enable_tf32()
    cfg = ColaLoraConfig(model=model_name, seed=seed, max_epochs=epochs, stage="retrain",
                         group_by_length=True, **hp)
    cfg.validate()
    s = setup(cfg, data, device)
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate,
                                 weight_decay=cfg.weight_decay,
                                 total_steps=s.steps_per_epoch * epochs,
                                 warmup_ratio=cfg.warmup_ratio)
    rows: list[dict] = []

    def report(m: dict, st) -> None:
        rows.append({k: v for k, v in m.items() if isinstance(v, (int, float))})
        print(f"  seed {seed} epoch {m['epoch']}/{epochs}: {m['train_s']:.1f} s, dev accuracy "
              f"{m['dev_accuracy']:.4f}, dev MCC {m['dev_mcc']:.4f}", flush=True)

    train_loop(model=s.model, optimizer=opt, scheduler=sched, loss_fn=s.loss_fn,
               train_batches=s.train_batches, evaluate=s.evaluate, max_epochs=epochs,
               best_metric=s.best_metric, mode=s.mode, report=report, device=device,
               train_stats=s.train_stats)
    s = opt = sched = None  # noqa: F841
    release()
    return rows


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.4f} ± {sd:.4f} (n={len(values)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="GGUF file or local HF model directory")
    p.add_argument("--data-dir", required=True, help="CoLA directory (cola_public)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--config", default=None,
                   help="JSON of hyperparameters replacing the default (the README's best)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: only to try the script on a tiny model")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_cola_lora.py: no CUDA GPU visible (torch.cuda.is_available() is False); "
              "--device cpu runs it on the CPU", file=sys.stderr)
        sys.exit(2)
    if args.epochs < 1:
        print(f"--epochs {args.epochs}: must be >= 1", file=sys.stderr)
        sys.exit(2)
    try:
        hp = {**REFERENCE_BEST, **(json.loads(args.config) if args.config else {})}
    except json.JSONDecodeError as e:
        print(f"--config {args.config!r}: not JSON ({e})", file=sys.stderr)
        sys.exit(2)

    from models.data.classification import tokenize_splits
    from models.data.cola import load_cola_dir
    from models.errors import InputError
    from models.hf import load_tokenizer, resolve_model
    from search.output import quiet_libraries

    quiet_libraries()

    try:
        model_name = resolve_model(args.model)
        splits = load_cola_dir(args.data_dir)
    except InputError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    device = torch.device(args.device)
    data = tokenize_splits(splits, load_tokenizer(model_name), selection_fraction=0.1, seed=0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}; model {args.model}; {len(data.split('train')[0])} training sentences; "
          f"config {hp}; seeds {args.seeds}; {args.epochs} epochs", flush=True)
    t0 = time.perf_counter()
    per_seed = {seed: train_seed(model_name, data, hp, seed=seed, epochs=args.epochs,
                                 device=device) for seed in args.seeds}
    last = [rows[-1] for rows in per_seed.values()]
    print(f"\nGLUE dev after epoch {args.epochs} (mean ± sd over seeds), {name}:")
    print("| split | accuracy | MCC |\n| --- | --- | --- |")
    for split in SPLITS:
        if f"{split}_mcc" in last[0]:
            print(f"| {split} | {mean_sd([r[f'{split}_accuracy'] for r in last])} | "
                  f"{mean_sd([r[f'{split}_mcc'] for r in last])} |")
    epoch_s = [r["train_s"] for rows in per_seed.values() for r in rows]
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "model": args.model,
                                              "config": hp, "epochs": args.epochs,
                                              "per_seed": per_seed}, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s; seconds per training epoch "
          f"{statistics.fmean(epoch_s):.1f}; dev MCC {mean_sd([r['dev_mcc'] for r in last])}")


if __name__ == "__main__":
    main()
