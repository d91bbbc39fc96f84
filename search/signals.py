"""SIGTERM ends a sweep the way Ctrl-C does: Tune stops its trials, saves its state one last
time, the driver writes its tables and prints the resume hint, and the command exits 143
(128 + SIGTERM) instead of 130.

Tune catches SIGINT while a Tuner runs and nothing else that a scheduler or ``kill`` sends;
Ray's own SIGTERM handler in the driver exits at once (with the native stack dump of whatever
the core worker was doing). So SIGTERM is handed to whatever handles SIGINT at that moment:
Tune's graceful stop inside ``fit()``, Python's KeyboardInterrupt elsewhere (the CLI turns
that into the same hint and exit code). Tune leaves its SIGINT handler installed when ``fit()`` returns, setting an
event nobody watches any more: ``tune_fit`` puts the previous one back, or a Ctrl-C or SIGTERM
between the sweep and its retrain would be lost."""
from __future__ import annotations

import contextlib
import signal

_received: list[int] = []  # the terminating signals seen, in order


def install():
    """(Re)install the SIGTERM handler: call again after ``ray.init``, which sets its own.
    -> the handler it replaced."""
    return signal.signal(signal.SIGTERM, _on_term)


def restore(handler) -> None:
    """Put back what the first ``install`` replaced, and forget the signals seen."""
    signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)
    _received.clear()


def _on_term(signum, frame) -> None:
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # Tune's inside a fit(); Python's KeyboardInterrupt outside
        handler(signal.SIGINT, frame)
    else:  # SIG_IGN / SIG_DFL: as a default SIGINT would
        raise KeyboardInterrupt


@contextlib.contextmanager
def tune_fit():
    """Around a ``Tuner.fit()``: SIGTERM stops it as Ctrl-C does; afterwards SIGINT's handler
    is the one from before (see the module docstring)."""
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def stop_requested() -> bool:
    """A SIGTERM came (also one that reached Tune as its run was ending): start nothing new."""
    return bool(_received)


def interrupted_code() -> int:
    """The exit code of an interrupted command: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return 128 + signal.SIGTERM if signal.SIGTERM in _received else 130
