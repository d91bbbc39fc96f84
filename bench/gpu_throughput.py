#!/usr/bin/env python
"""GPU throughput of the CoLA LoRA loop: samples/s and model FLOP utilisation (MFU), bf16.

Runs the shared loop through the study's own setup on one GPU, as a trial does (bf16 autocast,
TF32, fused AdamW, pinned non-blocking copies, length-grouped batches), for each batch size:
one warm-up epoch, then a timed epoch over CoLA's training set. Optionally (--compile) the same
under torch.compile; its first epoch includes compiling and is reported apart.

MFU = model FLOPs / (epoch seconds x peak bf16 FLOP/s). Model FLOPs are those of a LoRA step on
the real (unpadded) tokens: the forward and input-gradient matmuls of the frozen base plus
attention (the base needs no weight gradients; LoRA's are negligible), as in
bench/train_throughput.py's FLOP floor. The peak is given two ways: the chip's nominal dense
bf16 figure (when the card is known) and a bf16 8192^3 matmul measured in the same run.

    python bench/gpu_throughput.py --data-dir <CoLA dir> [--model <local HF model dir>] \\
        [--batch-sizes 32 128 512] [--compile]

Without --model it builds a GPT-2 small-shaped model in-process (12 layers, 768 wide, random
weights; speed does not depend on the weights) with a BPE tokenizer trained on CoLA's text, so
no hub is needed. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Nominal dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the card name.
NOMINAL_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12,
                "L4": 121e12}


def bf16_matmul_rate(n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def run_epochs(model_name, data, *, batch_size: int, lora_r: int, compile: bool,
               epochs: int, device: str = "cuda") -> list[dict]:
    """Per-epoch reports (train_s, peak_mem_mb, ...) of the shared loop on ``device``."""
    from models.cola_lora import ColaLoraConfig, setup
    from models.loop import build_optimizer, enable_tf32, train_loop
    from models.trial import release, seed_everything

    seed_everything(0)
    enable_tf32()
    cfg = ColaLoraConfig(model=model_name, batch_size=batch_size, lora_r=lora_r,
                         lora_alpha=2 * lora_r, learning_rate=5e-4, max_epochs=epochs,
                         stage="retrain", group_by_length=True, compile=compile)
    s = setup(cfg, data, torch.device(device))
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                 total_steps=s.steps_per_epoch * epochs, warmup_ratio=0.06)
    model = torch.compile(s.model, dynamic=True) if compile else s.model
    out: list[dict] = []
    train_loop(model=model, optimizer=opt, scheduler=sched, loss_fn=s.loss_fn,
               train_batches=s.train_batches, evaluate=lambda m: {"none": 0.0},
               max_epochs=epochs, best_metric="none", device=torch.device(device),
               report=lambda m, st: (out.append(dict(m)), print(
                   f"    batch {batch_size}{' compiled' if compile else ''}: epoch {m['epoch']} "
                   f"{m['train_s']:.2f} s", flush=True)))
    s = model = opt = sched = None  # noqa: F841
    release()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None, help="CoLA directory (default: generated data)")
    p.add_argument("--model", default=None,
                   help="GGUF file or local HF model directory (default: GPT-2 small shapes, built in-process)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile at the --compile-batch-size")
    p.add_argument("--compile-batch-size", type=int, default=128)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput.py: no CUDA GPU visible (torch.cuda.is_available() is False); "
              "this benchmark measures GPU throughput only", file=sys.stderr)
        sys.exit(2)
    bad = [b for b in args.batch_sizes if b < 1]
    if bad:
        print(f"--batch-sizes {bad[0]}: must be >= 1", file=sys.stderr)
        sys.exit(2)

    from search.output import quiet_libraries
    from train_throughput import floor_flops, matmul_shapes

    from models.data.classification import tokenize_splits
    from models.data.cola import load_cola_dir, synthetic_cola
    from models.cola_lora import ColaLoraConfig, build_lora_model
    from models.errors import InputError
    from models.hf import load_tokenizer, resolve_model
    from models.tiny import build_tiny_gpt2

    quiet_libraries()
    tmp = Path(tempfile.mkdtemp(prefix="gpu-throughput-"))
    splits = load_cola_dir(args.data_dir) if args.data_dir else synthetic_cola(n_train=8000)
    try:  # a GGUF file is converted once (cached), as --model does in the studies
        model_name = resolve_model(args.model) if args.model else None
    except InputError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    model_name = model_name or build_tiny_gpt2(
        tmp / "gpt2-small-shapes", splits.train_text + splits.dev_text, vocab_size=8000,
        n_layer=12, n_embd=768, n_head=12, n_positions=1024)
    data = tokenize_splits(splits, load_tokenizer(model_name), selection_fraction=0.1, seed=0)
    ids, _ = data.split("train")
    lengths = np.array([len(x) for x in ids])
    n = len(ids)

    name = torch.cuda.get_device_name()
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in name), None)
    measured = bf16_matmul_rate()
    probe = build_lora_model(ColaLoraConfig(model=model_name, lora_r=args.lora_r),
                             pad_token_id=data.pad_token_id)
    n_w, layers, hidden = matmul_shapes(probe)
    trainable = sum(q.numel() for q in probe.parameters() if q.requires_grad)
    del probe
    flops = floor_flops(lengths, n_w, layers, hidden)
    print(f"{name}: bf16 matmul 8192^3 measured {measured / 1e12:.0f} TFLOP/s"
          + (f", nominal {nominal / 1e12:.0f}" if nominal else ", nominal unknown"), flush=True)
    print(f"model {model_name}: {n_w / 1e6:.1f} M matmul weights, {layers} layers, hidden "
          f"{hidden}, LoRA r {args.lora_r} ({trainable / 1e6:.2f} M trainable); {n} training "
          f"sentences, {lengths.sum()} tokens (mean {lengths.mean():.1f}, max {lengths.max()}); "
          f"{flops / 1e12:.2f} TFLOP per epoch", flush=True)

    def mfu(seconds: float, peak: float | None) -> str:
        return f"{100 * flops / seconds / peak:5.1f} %" if peak else "   - "

    rows = []
    print(f"\n{'run':<26} {'epoch s':>8} {'samples/s':>10} {'tokens/s':>10} "
          f"{'MFU nominal':>11} {'MFU measured':>12} {'peak MiB':>9}", flush=True)

    def add(label: str, rep: dict, extra: dict | None = None) -> None:
        t = rep["train_s"]
        rows.append({"run": label, "train_s": t, "samples_per_s": n / t,
                     "tokens_per_s": lengths.sum() / t,
                     "mfu_nominal": flops / t / nominal if nominal else None,
                     "mfu_measured": flops / t / measured, "peak_mem_mb": rep["peak_mem_mb"],
                     **(extra or {})})
        print(f"{label:<26} {t:8.2f} {n / t:10.0f} {lengths.sum() / t:10.0f} "
              f"{mfu(t, nominal):>11} {mfu(t, measured):>12} {rep['peak_mem_mb']:9.0f}",
              flush=True)

    for b in args.batch_sizes:
        reps = run_epochs(model_name, data, batch_size=b, lora_r=args.lora_r, compile=False,
                          epochs=2)
        add(f"eager, batch {b}", reps[-1], {"warmup_epoch_s": reps[0]["train_s"]})
    if args.compile:
        b = args.compile_batch_size
        t0 = time.perf_counter()
        reps = run_epochs(model_name, data, batch_size=b, lora_r=args.lora_r, compile=True,
                          epochs=3)
        print(f"compiled, batch {b}: first epoch incl. compiling {reps[0]['train_s']:.1f} s "
              f"(three epochs {time.perf_counter() - t0:.1f} s)", flush=True)
        add(f"compiled, batch {b}", min(reps[1:], key=lambda r: r["train_s"]),
            {"first_epoch_s": reps[0]["train_s"]})
    summary = {"device": name, "bf16_measured_flops": measured, "bf16_nominal_flops": nominal,
               "epoch_model_flops": flops, "train_sentences": n, "tokens": int(lengths.sum()),
               "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    best = max(rows, key=lambda r: r["mfu_measured"])
    print(f"\nbest: {best['run']}: {best['samples_per_s']:.0f} samples/s, MFU "
          + (f"{100 * best['mfu_nominal']:.1f} % of nominal, " if nominal else "")
          + f"{100 * best['mfu_measured']:.1f} % of the measured bf16 matmul rate")


if __name__ == "__main__":
    main()
