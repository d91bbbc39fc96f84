"""SIGTERM takes Ctrl-C's path in this process, with no Ray: inside a Tune run it goes to the
handler Tune installed; between runs (where Tune leaves its handler behind, watching nothing)
it raises KeyboardInterrupt instead of being lost, and the exit code says SIGTERM."""
import os
import signal
import time

import pytest

from search import signals


def _deliver(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.5)  # the handler runs between bytecodes; never reached when it raises


@pytest.fixture
def installed():
    # as a fresh command starts: Python's own SIGINT handler (an earlier test that ran Tune in
    # this process may have left Tune's behind, which is what tune_fit guards against)
    saved_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signals.install()
    yield
    signals.restore(previous)
    signal.signal(signal.SIGINT, saved_int)


def test_sigterm_inside_a_tune_run_reaches_tunes_handler(installed):
    seen = []
    with signals.tune_fit():
        signal.signal(signal.SIGINT, lambda *a: seen.append(a[0]))  # as Tuner.fit() installs
        _deliver(signal.SIGTERM)
    assert seen == [signal.SIGINT]
    assert signals.stop_requested() and signals.interrupted_code() == 143


def test_sigterm_after_a_tune_run_is_not_lost(installed):
    stale = []
    before = signal.getsignal(signal.SIGINT)
    with signals.tune_fit():
        # Tune's handler for this run, left installed when fit() returns
        signal.signal(signal.SIGINT, lambda *a: stale.append(a[0]))
    assert signal.getsignal(signal.SIGINT) is before  # put back
    with pytest.raises(KeyboardInterrupt):
        _deliver(signal.SIGTERM)
    assert stale == [] and signals.interrupted_code() == 143
    with pytest.raises(KeyboardInterrupt):  # and Ctrl-C too
        _deliver(signal.SIGINT)


def test_ctrl_c_alone_exits_130(installed):
    assert not signals.stop_requested() and signals.interrupted_code() == 130
