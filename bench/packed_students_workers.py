"""The ``processes`` variant of bench/packed_students.py: K separate students, each in its own
(spawned) process, warmed up and then started together through a barrier once per round."""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

from packed_gru import separate_stepper  # noqa: E402
from packed_students_data import (  # noqa: E402
    make_student, sentence_lengths, slot_batches, slot_seed, sync)


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel end this process when the bench dies (killed, it runs no
    cleanup), rather than leave it waiting at the barrier; exit now if it already has."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(1)


def _proc_worker(index: int, args, parent: int, threads: int, barrier, results,
                 rounds: int) -> None:
    """One separate student in its own process: warm up, then one timed run per round, each
    started by the parent through the barrier so that all K run at the same time."""
    die_with_parent(parent)
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    step = separate_stepper(make_student(args, index, device), args.lr)
    batches = slot_batches(sentence_lengths(args.data_dir), args, seed=slot_seed(args, index),
                           count=args.steps, device=device)
    for _ in range(2):
        step(batches[0])
    sync(device)
    barrier.wait(Processes.TIMEOUT_S)  # warmed up
    for _ in range(rounds):
        barrier.wait(Processes.TIMEOUT_S)
        t0, c0 = time.time(), time.process_time()
        for b in batches:
            step(b)
        sync(device)
        results.put((index, t0, time.time(), time.process_time() - c0))


class Processes:
    """K separate-student processes (spawned: safe with CUDA and with torch's thread pools)."""

    TIMEOUT_S = 900

    def __init__(self, args, k: int):
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.k, self.rows = k, k * args.steps * args.batch_size
        self.threads = max(1, args.threads // k)
        self.barrier, self.queue = ctx.Barrier(k + 1), ctx.Queue()
        self.procs = [ctx.Process(target=_proc_worker, daemon=True,
                                  args=(i, args, os.getpid(), self.threads, self.barrier,
                                        self.queue, args.repeats))
                      for i in range(k)]
        for p in self.procs:
            p.start()
        self._wait()

    def _fail(self) -> None:
        self.close()
        sys.exit("a separate-student process failed (its traceback is above)")

    def _wait(self) -> None:
        try:
            self.barrier.wait(self.TIMEOUT_S)
        except threading.BrokenBarrierError:  # a worker died, or hung past the timeout
            self._fail()

    def _result(self) -> tuple:
        deadline = time.monotonic() + self.TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                return self.queue.get(timeout=1.0)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in self.procs):
                    break
        self._fail()

    def round(self) -> tuple[float, float]:
        """One timed run of all K at once -> (aggregate samples/s, samples per CPU second)."""
        self._wait()
        done = [self._result() for _ in range(self.k)]
        wall = max(d[2] for d in done) - min(d[1] for d in done)
        return self.rows / wall, self.rows / sum(d[3] for d in done)

    def close(self) -> None:
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
