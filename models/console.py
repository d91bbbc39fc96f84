"""Console progress for the driver's phases outside Ray (tiny-model pretraining, the teacher
pass, model conversion): a bar with an estimate where the work has steps, a heartbeat where it
has none, so that nothing stays silent for more than ``HEARTBEAT_S``."""
from __future__ import annotations

import sys
import threading
import time

HEARTBEAT_S = 10.0


def clock(seconds: float) -> str:
    """Elapsed time as the console and the report write it: 48 s, 2 min 28 s, 1 h 05 min."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def bar(iterable, *, total: int | None = None, desc: str, unit: str = "it"):
    """tqdm over ``iterable`` with its rate and time left. On a terminal it redraws in place;
    into a file or pipe it writes a line at most every ``HEARTBEAT_S / 2`` seconds."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=True,
                mininterval=0.5 if tty else HEARTBEAT_S / 2, dynamic_ncols=tty, ascii=not tty)


class Heartbeat:
    """A context manager for a phase with no steps of its own (loading or converting a model):
    prints ``what`` at the start, a line every ``every`` seconds while it runs, and the time it
    took."""

    def __init__(self, what: str, *, every: float = HEARTBEAT_S, out=print):
        self.what, self.every, self.out = what, every, out

    def __enter__(self):
        self.t0 = time.time()
        self.stop = threading.Event()
        self.out(f"{self.what} ...", flush=True)

        def beat():
            while not self.stop.wait(self.every):
                self.out(f"   ... {self.what}: {clock(time.time() - self.t0)}", flush=True)

        self.thread = threading.Thread(target=beat, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if exc[0] is None:
            self.out(f"   {self.what}: done in {clock(time.time() - self.t0)}", flush=True)
        return False
