#!/usr/bin/env python
"""K CoLA + LoRA trials packed on one shared base (models/packed) against K separate trial
processes on the same device: aggregate samples/s, peak memory (the K processes summed), and
operator calls per trial-sample (torch's profiler), for each K. Ray-free: it needs torch,
transformers and peft only.

    python bench/packed_throughput.py --model FILE.gguf|HF_DIR [--data-dir <CoLA dir>] \
        [--ks 1,2,4,8,16,32] [--batch-size 32] [--lora-r 8] [--steps 4] [--device cpu|cuda]

Each measurement runs in its own process(es), so peaks are each run's own; the K separate
processes wait for one another and then train at the same time, sharing the device as trial
processes do (each with cores / K threads, at least 1). Every trial trains the same
configuration with its own seed and learning rate. Each run's first step trains every trial's
longest sentences, so the peaks are a whole epoch's; the packed memory estimate beside them is
the sweep plan's (``search.memory.packed_estimate``). K separate processes are not started
where the largest process of the last separate run, K times, would not fit ('-'). On CUDA also
the device memory and MFU (4 FLOPs a frozen parameter and real token over the card's bf16
peak). Last line: the packed/separate throughput ratio at the largest K measured both ways.
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

from models.packed.probe import endless_batches  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_data(args, model_dir: str):
    from models.data.classification import tokenize_splits
    from models.data.cola import load_cola_dir, synthetic_cola
    from models.hf import load_tokenizer

    splits = load_cola_dir(args.data_dir) if args.data_dir else synthetic_cola()
    return tokenize_splits(splits, load_tokenizer(model_dir), selection_fraction=0.1, seed=0,
                           max_train_samples=40 * args.batch_size)


class Counted:
    """Batches from ``batches``, counting their real (unpadded) tokens: the work MFU counts."""

    def __init__(self, batches):
        self.batches, self.tokens = batches, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.batches)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


# bf16 dense peak of the card, TFLOP/s (vendor data sheets), by a part of its name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def mfu(frozen_params: int, tokens: int, seconds: float, device, peak_tflops: float | None):
    """Model FLOPs utilisation of training adapters on a frozen base: ~4 FLOPs a base parameter
    and token (forward 2, backward to the inputs 2; no weight gradients of the base), over the
    card's peak. None on the CPU or an unknown card."""
    if device.type != "cuda":
        return None
    if peak_tflops is None:
        name = torch.cuda.get_device_name(device)
        peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if peak_tflops is None:
        return None
    return 4 * frozen_params * tokens / seconds / (peak_tflops * 1e12)


def device_peak_mb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def count_ops(step) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def packed_worker(args, model_dir: str, data, device) -> dict:
    from models.hf import count_parameters
    from models.packed.lora import LORA
    from models.packed.probe import start_slots
    from search.memory import model_shape, packed_estimate

    static = None
    if args.compile:  # as a --compile --pack sweep's engine: static shapes, a graph per bucket
        from models.packed.static import StaticShapes

        static = StaticShapes.for_lengths([len(x) for x in data.split("fit")[0]],
                                          rows=args.batch_size)
    streams = []

    def counted(batches):
        streams.append(Counted(batches))
        return streams[-1]

    trainer = start_slots(
        model_dir=model_dir, data=data, k=args.k, batch_size=args.batch_size, method=LORA,
        adapter={"rank": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.1},
        target_modules=None, device=device, wrap=counted, static=static, compile=args.compile,
        learning_rates=[1e-4 * (1 + i) for i in range(args.k)])
    model = trainer.model

    def step():
        trainer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Warm-up: lazy initialisations (and, compiled, most buckets' graphs) stay out of the
    # counts and times.
    for _ in range(2 + (3 * len(static.widths) if static else 0)):
        step()
    ops = count_ops(step)
    before = sum(c.tokens for c in streams)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - t0
    tokens = sum(c.tokens for c in streams) - before
    rows = args.steps * args.k * args.batch_size
    counts = count_parameters(model)
    shape = model_shape(model_dir)
    lengths = [len(x) for x in data.split("fit")[0]]
    est = packed_estimate(k=args.k, total_params=counts["total_params"] - counts["trainable_params"],
                          slot_params=counts["trainable_params"] // args.k,
                          batch_size=args.batch_size, tokens=max(lengths), **shape)
    frozen = counts["total_params"] - counts["trainable_params"]
    return {"samples_per_s": rows / seconds, "ops_per_trial_sample": ops / (args.k * args.batch_size),
            "peak_mb": peak_rss_mb(), "estimate_mb": est.bytes / 2**20,
            "device_mb": device_peak_mb(device),
            "mfu": mfu(frozen, tokens, seconds, device, args.peak_tflops)}


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
    model = torch.compile(s.model, dynamic=True) if args.compile else s.model  # as trials do
    params = [q for q in s.model.parameters() if q.requires_grad]
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                 total_steps=10_000, warmup_ratio=0.0)
    batches = Counted(endless_batches(data, args.batch_size, args.index))
    s.model.train()

    def step():
        loss, _ = s.loss_fn(model, {k: v.to(device) for k, v in next(batches).items()})
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
    before = batches.tokens
    t0 = time.time()
    for _ in range(args.steps):
        step()
    end = time.time()
    frozen = sum(q.numel() for q in s.model.parameters() if not q.requires_grad)
    return {"start": t0, "end": end, "samples": args.steps * args.batch_size,
            "ops_per_trial_sample": ops / args.batch_size, "peak_mb": peak_rss_mb(),
            "device_mb": device_peak_mb(device),
            "mfu": mfu(frozen, batches.tokens - before, end - t0, device, args.peak_tflops)}


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
           *(["--data-dir", args.data_dir] if args.data_dir else []),
           *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []),
           *(["--compile"] if args.compile else []), *extra]
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
    mfus = [r["mfu"] * (r["end"] - r["start"]) / wall for r in rs if r["mfu"] is not None]
    return {"samples_per_s": sum(r["samples"] for r in rs) / wall,
            "ops_per_trial_sample": rs[0]["ops_per_trial_sample"],
            "peak_mb": sum(r["peak_mb"] for r in rs),
            "per_process_mb": max(r["peak_mb"] for r in rs),
            "per_process_device_mb": max(r["device_mb"] for r in rs),
            "mfu": sum(mfus) if mfus else None}


def available_mb(device) -> tuple[float, float]:
    """(host memory available, device memory in total; inf on the CPU), MB."""
    with open("/proc/meminfo") as f:
        host = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 1024
    dev = torch.cuda.mem_get_info()[1] / 2**20 if device.type == "cuda" else float("inf")
    return host, dev


CUDA_CONTEXT_MB = 600  # what each separate process's CUDA context holds besides its tensors


def separate_fits(k: int, seen: dict | None, device) -> bool:
    """Whether K separate trial processes fit, judged by the largest process of the last
    separate run (the first run, K=1, always goes ahead)."""
    if seen is None:
        return True
    host, dev = available_mb(device)
    need_dev = k * (seen["per_process_device_mb"] + CUDA_CONTEXT_MB) if device.type == "cuda" else 0
    return k * seen["per_process_mb"] * 1.1 < host and need_dev < dev


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="GGUF file or local HF model directory")
    p.add_argument("--data-dir", default=None, help="CoLA directory (default: generated data)")
    p.add_argument("--ks", default="1,2,4,8,16,32", help="numbers of trials, comma-separated "
                   "(K separate processes are skipped, '-', where they would not fit in memory)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true",
                   help="torch.compile both sides: packed with static shapes (a graph per length "
                        "bucket; CUDA graphs on a GPU), each solo trial as a --compile trial")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the card's bf16 dense peak for MFU (default: known H100/H200/A100/L40S/A10)")
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
    device = torch.device(args.device)
    print(f"model {Path(args.model).name}, CoLA {'at ' + args.data_dir if args.data_dir else 'generated'}, "
          f"LoRA r {args.lora_r} on every linear layer, batch {args.batch_size} per trial, "
          f"{args.steps} timed steps, {args.device}, {cores} cores")
    print(f"{'K':>3} {'packed/s':>9} {'separate/s':>10} {'ratio':>6} {'ops/sample':>10} "
          f"{'solo ops':>9} {'packed MB':>9} {'est. MB':>8} {'separate MB':>11}"
          + (f" {'GPU MB':>7} {'MFU %':>6} {'solo MFU %':>10}" if device.type == "cuda" else ""))
    ratio, seen, last = float("nan"), None, None
    for k in ks:
        packed = result(spawn(args, ["--worker", "packed", "--k", str(k),
                                     "--threads", str(cores)]))
        sep = separate(args, k, cores) if separate_fits(k, seen, device) else None
        seen = sep or seen
        ratio = packed["samples_per_s"] / sep["samples_per_s"] if sep else float("nan")
        print(row(k, packed, sep, ratio, device), flush=True)
        last = (k, ratio) if sep else last
    if last is None:
        print("packed/separate samples/s: no K with both measured")
    else:
        print(f"packed/separate samples/s at K={last[0]}: {last[1]:.2f}")


def row(k: int, packed: dict, sep: dict | None, ratio: float, device) -> str:
    """One K's line; '-' where K separate processes would not fit in memory (not run)."""
    def fmt(v, spec: str, width: int) -> str:
        return f"{v:>{width}{spec}}" if v is not None else f"{'-':>{width}}"

    sep = sep or {}
    line = (f"{k:>3} {packed['samples_per_s']:>9.1f} {fmt(sep.get('samples_per_s'), '.1f', 10)} "
            f"{ratio:>6.2f} {packed['ops_per_trial_sample']:>10.1f} "
            f"{fmt(sep.get('ops_per_trial_sample'), '.1f', 9)} {packed['peak_mb']:>9.0f} "
            f"{packed['estimate_mb']:>8.0f} {fmt(sep.get('peak_mb'), '.0f', 11)}")
    if device.type == "cuda":
        pct = lambda v: None if v is None else 100 * v  # noqa: E731
        line += (f" {packed['device_mb']:>7.0f} {fmt(pct(packed['mfu']), '.2f', 6)} "
                 f"{fmt(pct(sep.get('mfu')), '.2f', 10)}")
    return line


if __name__ == "__main__":
    main()
