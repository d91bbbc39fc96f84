#!/usr/bin/env python
"""K CoLA + LoRA trials packed on one shared base (models/packed) against K separate trial
processes on the same device: aggregate samples/s, peak memory (the K processes summed), and
operator calls per trial-sample (torch's profiler), for each K. Ray-free: it needs torch,
transformers and peft only.

    python bench/packed_throughput.py --model FILE.gguf|HF_DIR [--data-dir <CoLA dir>] \
        [--ks 1,2,4,8] [--batch-size 32] [--lora-r 8] [--steps 4] [--device cpu|cuda]

Each measurement runs in its own process(es), so peaks are each run's own; the K separate
processes wait for one another and then train at the same time, sharing the device as trial
processes do (each with cores / K threads, at least 1). Every trial trains the same
configuration with its own seed and learning rate. The packed memory estimate is the sweep
plan's (``search.memory.packed_estimate``). Last line: the packed/separate throughput ratio at
the largest K.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_data(args, model_dir: str):
    from models.data.classification import tokenize_splits
    from models.data.cola import load_cola_dir, synthetic_cola
    from models.hf import load_tokenizer

    splits = load_cola_dir(args.data_dir) if args.data_dir else synthetic_cola()
    return tokenize_splits(splits, load_tokenizer(model_dir), selection_fraction=0.1, seed=0,
                           max_train_samples=40 * args.batch_size)


def forever(data, batch_size: int, seed: int):
    """Training batches, epoch after epoch (a timed run never runs out)."""
    from models.data.batching import classification_batches

    ids, labels = data.split("fit")
    epoch = 0
    while True:
        epoch += 1
        yield from classification_batches(ids, labels, batch_size=batch_size,
                                          pad_id=data.pad_token_id,
                                          shuffle_seed=seed * 1000 + epoch, group_by_length=True)


def count_ops(step) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def packed_worker(args, model_dir: str, data, device) -> dict:
    from models.hf import count_parameters, load_sequence_classifier
    from models.lora import lora_targets
    from models.packed.layers import PackedLoRA
    from models.packed.trainer import PackedTrainer, SlotPlan
    from search.memory import model_shape, packed_estimate

    base = load_sequence_classifier(model_dir, num_labels=2, pad_token_id=data.pad_token_id)
    model = PackedLoRA(base, capacity=args.k, max_rank=args.lora_r,
                       target_modules=lora_targets(base, None)).to(device)
    trainer = PackedTrainer(model, device=device, pad_id=data.pad_token_id)
    rows = 0
    for i in range(args.k):
        slot = trainer.attach(SlotPlan(rank=args.lora_r, alpha=2 * args.lora_r, dropout=0.1,
                                       learning_rate=1e-4 * (1 + i), weight_decay=0.0,
                                       warmup_ratio=0.0, total_steps=10_000, seed=i))
        trainer.start_epoch(slot, forever(data, args.batch_size, i))

    def step():
        trainer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    step()  # warm-up: lazy initialisations stay out of the counts and times
    ops = count_ops(step)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - t0
    rows = args.steps * args.k * args.batch_size
    counts = count_parameters(model)
    shape = model_shape(model_dir)
    lengths = [len(x) for x in data.split("fit")[0]]
    est = packed_estimate(k=args.k, total_params=counts["total_params"] - counts["trainable_params"],
                          slot_params=counts["trainable_params"] // args.k,
                          batch_size=args.batch_size, tokens=max(lengths), **shape)
    return {"samples_per_s": rows / seconds, "ops_per_trial_sample": ops / (args.k * args.batch_size),
            "peak_mb": peak_rss_mb(), "estimate_mb": est.bytes / 2**20}


def solo_worker(args, model_dir: str, data, device) -> dict:
    from models.cola_lora import ColaLoraConfig, setup
    from models.dropout import use_cpu_dropout
    from models.loop import _step, build_optimizer

    cfg = ColaLoraConfig(model=model_dir, batch_size=args.batch_size, lora_r=args.lora_r,
                         lora_alpha=2 * args.lora_r, lora_dropout=0.1, seed=args.index,
                         learning_rate=1e-4 * (1 + args.index))
    s = setup(cfg, data, device)
    if device.type == "cpu":
        use_cpu_dropout(s.model)  # as a trial on the CPU does (models/trial.py)
    params = [q for q in s.model.parameters() if q.requires_grad]
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                 total_steps=10_000, warmup_ratio=0.0)
    batches = forever(data, args.batch_size, args.index)
    s.model.train()

    def step():
        loss, _ = s.loss_fn(s.model, {k: v.to(device) for k, v in next(batches).items()})
        loss.backward()
        _step(params, opt, sched, 1.0)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    step()
    ops = count_ops(step)
    if args.go:  # wait for the other processes, so that all train at the same time
        Path(args.go + f".ready{args.index}").touch()
        while not Path(args.go).exists():
            time.sleep(0.01)
    t0 = time.time()
    for _ in range(args.steps):
        step()
    return {"start": t0, "end": time.time(), "samples": args.steps * args.batch_size,
            "ops_per_trial_sample": ops / args.batch_size, "peak_mb": peak_rss_mb()}


def run_worker(args) -> None:
    from models.hf import resolve_model
    from search.output import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model_dir = resolve_model(args.model)
    data = load_data(args, model_dir)
    fn = packed_worker if args.worker == "packed" else solo_worker
    print(json.dumps(fn(args, model_dir, data, device)), flush=True)


def spawn(args, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
           "--lora-r", str(args.lora_r), "--steps", str(args.steps), "--device", args.device,
           *(["--data-dir", args.data_dir] if args.data_dir else []), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        sys.exit(f"a worker failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def separate(args, k: int, cores: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        go = str(Path(tmp) / "go")
        procs = [spawn(args, ["--worker", "solo", "--index", str(i), "--go", go,
                              "--threads", str(max(1, cores // k))]) for i in range(k)]
        while not all(Path(go + f".ready{i}").exists() for i in range(k)):
            if any(p.poll() not in (None, 0) for p in procs):
                sys.exit("a separate trial process failed")
            time.sleep(0.05)
        Path(go).touch()
        rs = [result(p) for p in procs]
    wall = max(r["end"] for r in rs) - min(r["start"] for r in rs)
    return {"samples_per_s": sum(r["samples"] for r in rs) / wall,
            "ops_per_trial_sample": rs[0]["ops_per_trial_sample"],
            "peak_mb": sum(r["peak_mb"] for r in rs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="GGUF file or local HF model directory")
    p.add_argument("--data-dir", default=None, help="CoLA directory (default: generated data)")
    p.add_argument("--ks", default="1,2,4,8", help="numbers of trials, comma-separated")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    # Internal: one measurement's process.
    p.add_argument("--worker", choices=["packed", "solo"], help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--go", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_worker(args)
        return
    try:
        ks = [int(x) for x in args.ks.split(",")]
        assert ks and all(k >= 1 for k in ks)
    except (ValueError, AssertionError):
        p.error(f"--ks {args.ks!r}: comma-separated integers >= 1 expected")
    cores = os.cpu_count() or 1
    print(f"model {Path(args.model).name}, CoLA {'at ' + args.data_dir if args.data_dir else 'generated'}, "
          f"LoRA r {args.lora_r} on every linear layer, batch {args.batch_size} per trial, "
          f"{args.steps} timed steps, {args.device}, {cores} cores")
    print(f"{'K':>3} {'packed/s':>9} {'separate/s':>10} {'ratio':>6} {'ops/sample':>10} "
          f"{'solo ops':>9} {'packed MB':>9} {'est. MB':>8} {'separate MB':>11}")
    ratio = float("nan")
    for k in ks:
        packed = result(spawn(args, ["--worker", "packed", "--k", str(k),
                                     "--threads", str(cores)]))
        sep = separate(args, k, cores)
        ratio = packed["samples_per_s"] / sep["samples_per_s"]
        print(f"{k:>3} {packed['samples_per_s']:>9.1f} {sep['samples_per_s']:>10.1f} "
              f"{ratio:>6.2f} {packed['ops_per_trial_sample']:>10.1f} "
              f"{sep['ops_per_trial_sample']:>9.1f} {packed['peak_mb']:>9.0f} "
              f"{packed['estimate_mb']:>8.0f} {sep['peak_mb']:>11.0f}", flush=True)
    print(f"{ratio:.2f}")


if __name__ == "__main__":
    main()
