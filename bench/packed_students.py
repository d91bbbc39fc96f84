#!/usr/bin/env python
"""Does packing K same-shaped GRU distillation students into one model (HFTA-style: weights
stacked [K, ...], batched matmuls, one optimizer) train faster than K separate students?

For each K, on one device, training steps (forward + KD loss + backward + gradient clipping +
AdamW step, as a trial's step in models/loop.py) of:

  separate   K ``GRUStudent``s (models/student.py, nn.GRU) stepped one after another in one
             process: K trials in one process, no packing
  packed     one ``PackedGRUStudents``: the K embedding tables stacked into one [K * V, E]
             (one gather), each GRU layer's weights stacked [K, 3H, In] / [K, 3H, H] with the
             recurrence written out (one bmm for the input projection over all time steps,
             one bmm per time step for the hidden one), heads stacked [K, C, F]; one AdamW
             over the stacked tensors, gradients clipped per slot, kept between steps
  processes  (unless --no-processes) K processes of one separate student each
             (torch.multiprocessing, --threads / K threads each, at least 1), started together

Printed per K: aggregate samples/s of each (median over --repeats rounds, the variants
interleaved within a round so a shared machine's load hits them alike), packed/separate ratio
(median and range of the per-round ratios), samples per CPU second of each variant's own
process(es) (robust to other jobs on a shared machine), operator calls per trial-sample (aten calls in
torch's profiler, as bench/packed_throughput.py counts them; on CUDA also GPU kernels),
operator calls per time step (the difference between steps on batches of two fixed lengths:
K separate students together against the packed model), the packed model's padding (every
slot's batch padded to the longest slot's), and the largest step-1 loss difference between
a slot and the separate student whose weights it holds (verified before timing).

The packed optimizer is torch's AdamW over a few big stacked tensors, the same fused
implementation the trials use. That is exact here only because every slot shares its
hyperparameters (learning rate, betas, weight decay) in this measurement; slots with their
own learning rates need a per-slot optimizer (models/packed does that for LoRA).

The students train on length-grouped batches (models/data/batching.py) in one order, as a
sweep's trials do (search/plan.py gives every trial the same seed, so trials with one batch
size read the same batches at each step: the packed batch needs no extra padding);
``--batch-order own`` gives each student its own shuffle instead, and the packed model then
runs every slot to the longest slot's length (the ``pad x`` column). Token ids are synthetic;
sentence lengths are drawn like CoLA's under the SmolLM2 tokenizer (log-normal, clipped to
CoLA's range), or counted from --data-dir's training sentences (words and punctuation marks,
close to that tokenizer's count). Torch only: no Ray, no Optuna, no model download.

    python bench/packed_students.py [--ks 1,2,4,8,16] [--steps 8] [--repeats 3] \\
        [--device cpu|cuda] [--threads N] [--vocab-size 49152] [--embed-dim 128] \\
        [--hidden-size 128] [--num-layers 1] [--bidirectional] [--batch-size 64] \\
        [--batch-order shared|own] [--data-dir ../shared/data/cola_public] [--no-processes]

On a machine shared with other jobs, --threads 1 and the per-CPU-second columns are the
figures to trust: a multi-threaded step whose cores are also running other processes waits
at every parallel operator for a descheduled thread.

Last line: ``packed/separate samples/s at K=8: X.XX`` (the largest K when 8 is not run).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from packed_gru import PackedGRUStudents, packed_stepper, separate_stepper  # noqa: E402
from packed_students_checks import count_calls, per_time_step, verify  # noqa: E402
from packed_students_data import (  # noqa: E402
    PAD_ID, make_student, sentence_lengths, slot_batches, slot_seed, stack_batches, sync)
from packed_students_workers import Processes  # noqa: E402


# --------------------------------------------------------------------------- timing

def time_rounds(args, k: int, sep_once, pk_once) -> dict:
    """Aggregate samples/s of each variant per round (the variants interleaved, their order
    alternating between rounds) and samples per CPU second (the process's own CPU time: what
    other jobs on a shared machine take does not count, a thread's spinning does) -> medians,
    and the median (and range) of the per-round packed/separate ratios (paired: both ran
    under the same load)."""
    procs = Processes(args, k) if args.processes else None
    rates = {name: [] for name in ("sep", "pk", "procs", "sep_cpu", "pk_cpu", "procs_cpu")}
    rows = k * args.batch_size * args.steps
    try:
        for r in range(args.repeats):
            pair = [("sep", sep_once), ("pk", pk_once)]
            for name, fn in (pair if r % 2 == 0 else pair[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                for j in range(args.steps):
                    fn(j)
                rates[name].append(rows / (time.perf_counter() - t0))
                rates[name + "_cpu"].append(rows / (time.process_time() - c0))
            if procs:
                wall, cpu = procs.round()
                rates["procs"].append(wall)
                rates["procs_cpu"].append(cpu)
    finally:
        if procs:
            procs.close()
    out = {name: statistics.median(v) for name, v in rates.items() if v}
    ratios = [p / s for p, s in zip(rates["pk"], rates["sep"])]
    out.update(ratio=statistics.median(ratios), range=f"{min(ratios):.2f}-{max(ratios):.2f}",
               cpu_ratio=statistics.median(p / s for p, s in
                                           zip(rates["pk_cpu"], rates["sep_cpu"])))
    if procs:
        out["pk_procs"] = out["pk"] / out["procs"]
    return out


def measure_k(args, k: int, lengths: np.ndarray, device: torch.device) -> dict:
    """One table row: K students and their packed copy, verified, counted, then timed."""
    students = [make_student(args, i, device) for i in range(k)]
    packed = PackedGRUStudents(students).to(device)
    per_slot = [slot_batches(lengths, args, seed=slot_seed(args, i), count=args.steps,
                             device=device) for i in range(k)]
    stacked = [stack_batches([s[j] for s in per_slot]) for j in range(args.steps)]
    row = {"k": k, "dloss": verify(students, packed, per_slot, stacked),
           # time steps x rows the packed recurrence runs, over what the students run
           "pad": sum(k * b["input_ids"].shape[2] for b in stacked)
           / sum(b["input_ids"].shape[1] for s in per_slot for b in s)}
    steppers = [separate_stepper(s, args.lr) for s in students]
    step_packed = packed_stepper(packed, args.lr)

    def sep_once(j: int) -> None:
        for fn, s in zip(steppers, per_slot):
            fn(s[j])
        sync(device)

    def pk_once(j: int) -> None:
        step_packed(stacked[j])
        sync(device)

    for _ in range(2):  # warm-up: lazy initialisations (optimizer state) stay out of counts
        sep_once(0), pk_once(0)
    rows = k * args.batch_size
    (ops_sep, krn_sep), (ops_pk, krn_pk) = (count_calls(lambda: sep_once(0), device),
                                            count_calls(lambda: pk_once(0), device))
    row.update(ops_sep=ops_sep / rows, ops_pk=ops_pk / rows)
    if krn_sep is not None:
        row.update(kernels_sep=krn_sep / rows, kernels_pk=krn_pk / rows)
    row.update(per_time_step(args, k, steppers, step_packed, device))
    row.update(time_rounds(args, k, sep_once, pk_once))
    return row


# (header, key, width, format) of the table's columns; CUDA adds the kernel columns.
COLUMNS = [("K", "k", 3, "d"), ("separate/s", "sep", 10, ".0f"), ("packed/s", "pk", 9, ".0f"),
           ("ratio", "ratio", 6, ".2f"), ("range", "range", 10, "s"),
           ("procs/s", "procs", 8, ".0f"), ("pk/procs", "pk_procs", 8, ".2f"),
           ("ops/ts sep", "ops_sep", 10, ".1f"), ("ops/ts pk", "ops_pk", 9, ".1f"),
           ("ops/t K*sep", "ops_t_sep", 11, ".0f"), ("ops/t pk", "ops_t_pk", 8, ".0f"),
           ("pad x", "pad", 5, ".2f"), ("|dloss|", "dloss", 8, ".1e"),
           ("sep/cpu-s", "sep_cpu", 9, ".0f"), ("pk/cpu-s", "pk_cpu", 8, ".0f"),
           ("cpu ratio", "cpu_ratio", 9, ".2f"), ("procs/cpu-s", "procs_cpu", 11, ".0f")]
CUDA_COLUMNS = [("krn/ts sep", "kernels_sep", 10, ".1f"), ("krn/ts pk", "kernels_pk", 9, ".1f"),
                ("krn/t K*sep", "kernels_t_sep", 11, ".0f"), ("krn/t pk", "kernels_t_pk", 8, ".0f")]


def table_line(columns, row: dict | None = None) -> str:
    if row is None:
        return " ".join(f"{h:>{w}}" for h, _, w, _ in columns)
    return " ".join(f"{row[key]:>{w}{fmt}}" if key in row else f"{'-':>{w}}"
                    for _, key, w, fmt in columns)


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="1,2,4,8,16", help="numbers of students, comma-separated")
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (variants interleaved)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the one-process variants (default: all cores, as a "
                        "packed engine would have them); each of K processes gets threads / K")
    p.add_argument("--vocab-size", type=int, default=49152,
                   help="the teacher tokenizer's vocabulary (default: SmolLM2's)")
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (every student)")
    p.add_argument("--data-dir", default=None,
                   help="CoLA directory whose training sentences give the lengths "
                        "(default: lengths drawn like CoLA's)")
    p.add_argument("--batch-order", choices=["shared", "own"], default="shared",
                   help="shared: every student reads the same batches, as a sweep's trials do "
                        "(one seed); own: each its own shuffle (the packed batch pads to the "
                        "longest slot's)")
    p.add_argument("--no-processes", dest="processes", action="store_false",
                   help="skip the K-processes variant")
    args = p.parse_args(argv)
    try:
        args.ks = [int(x) for x in args.ks.split(",")]
    except ValueError:
        p.error(f"--ks {args.ks!r}: comma-separated integers expected")
    for name in ("steps", "repeats", "threads", "vocab_size", "embed_dim", "hidden_size",
                 "num_layers", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if not args.ks or min(args.ks) < 1:
        p.error(f"--ks {','.join(map(str, args.ks))}: every K must be >= 1")
    if not 0 <= args.dropout < 1:
        p.error(f"--dropout {args.dropout}: must be in [0, 1)")
    if args.vocab_size < 2:
        p.error(f"--vocab-size {args.vocab_size}: must be >= 2 (id {PAD_ID} is padding)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    lengths = sentence_lengths(args.data_dir)
    if args.batch_size > len(lengths):
        sys.exit(f"--batch-size {args.batch_size}: larger than the {len(lengths)} sentences")
    load = os.getloadavg()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} cores"
    print(f"GRU students: vocab {args.vocab_size}, embed {args.embed_dim}, hidden "
          f"{args.hidden_size}, {args.num_layers} layer(s), "
          f"{'bi' if args.bidirectional else 'uni'}directional, dropout {args.dropout}, "
          f"batch {args.batch_size}, {args.batch_order} batch order; sentence lengths "
          f"{'from ' + args.data_dir if args.data_dir else 'drawn like CoLA'} "
          f"(mean {lengths.mean():.1f}, max {lengths.max()})")
    print(f"{args.device} ({name}), {args.threads} thread(s) for separate and packed, "
          f"{args.steps} steps x {args.repeats} rounds; load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; torch {torch.__version__}")
    columns = COLUMNS + (CUDA_COLUMNS if device.type == "cuda" else [])
    print(table_line(columns), flush=True)
    rows = []
    for k in args.ks:
        rows.append(measure_k(args, k, lengths, device))
        print(table_line(columns, rows[-1]), flush=True)
    load = os.getloadavg()
    print(f"samples/s: medians over rounds; ops/ts: aten calls per trial-sample; ops/t: per "
          f"time step of the recurrence; pad x: packed time steps over the students'; /cpu-s: "
          f"samples per CPU second of the variant's own process(es); load average at the end "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    last = next((r for r in rows if r["k"] == 8), rows[-1])
    print(f"packed/separate samples/s at K={last['k']}: {last['ratio']:.2f}")
    return last["ratio"]


if __name__ == "__main__":
    main()
