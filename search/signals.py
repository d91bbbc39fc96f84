"""SIGTERM ends a sweep the way Ctrl-C does: Tune stops its trials, saves its state one last
time, the driver writes its tables and prints the resume hint, and the command exits 143
(128 + SIGTERM) instead of 130.

Tune catches SIGINT while a Tuner runs and nothing else that a scheduler or ``kill`` sends;
Ray's own SIGTERM handler in the driver exits at once (with the native stack dump of whatever
the core worker was doing). So SIGTERM is handed to whatever handles SIGINT at that moment:
Tune's graceful stop inside ``fit()``, Python's KeyboardInterrupt elsewhere (the CLI turns
that into the same hint and exit code)."""
from __future__ import annotations

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
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIG_IGN / SIG_DFL: as a default SIGINT would
        raise KeyboardInterrupt


def interrupted_code() -> int:
    """The exit code of an interrupted command: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return 128 + signal.SIGTERM if signal.SIGTERM in _received else 130
