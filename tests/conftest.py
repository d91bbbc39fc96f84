"""Shared fixtures: a tiny GPT-2 built in-process (tokenizer trained on the fly), the generated
acceptability set, the real CoLA sample when it is there, and a CLI runner."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_COLA = REPO.parent / "shared" / "data" / "cola_public"
COLA_SCRIPT = REPO / "search" / "cola_lora.py"


@pytest.fixture(scope="session")
def synthetic():
    from models.data.cola import synthetic_cola

    return synthetic_cola()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, synthetic) -> str:
    from models.tiny import build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model",
                           synthetic.train_text + synthetic.dev_text)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, synthetic) -> str:
    from models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("llama") / "model",
                            synthetic.train_text + synthetic.dev_text)


@pytest.fixture(scope="session")
def shared_cola() -> Path:
    if not (SHARED_COLA / "raw" / "in_domain_train.tsv").is_file():
        pytest.skip(f"real CoLA sample not present at {SHARED_COLA}")
    return SHARED_COLA


# One trial at a time, so that which trials ASHA stops does not depend on a race (cola_smoke).
SMOKE_SERIAL = ["--cpus-per-trial", "2"]


@pytest.fixture(scope="session")
def smoke_storage(tmp_path_factory) -> Path:
    """One storage path for the smoke sweeps below (the report reads them side by side)."""
    return tmp_path_factory.mktemp("smoke-sweeps") / "runs"


@pytest.fixture(scope="session")
def cola_smoke(smoke_storage):
    """The CoLA LoRA smoke sweep as the README runs it (``--smoke-test``: 6 trials x 3 epochs,
    top 2 retrained with 2 seeds), run once for every test that reads it (test_smoke_sweep,
    test_report). The tests check its exit code and read only.

    SMOKE_SERIAL runs one trial at a time. ASHA's decisions depend on the order in which trials
    reach a rung, and TPE's later suggestions on the order in which trials end; two trials side
    by side race for both, and 1 run in 6 ASHA stopped nothing. One at a time, the
    suggestions, metrics and stops are the same in every run (~6 s more)."""
    return run_cli(COLA_SCRIPT,
                   ["--smoke-test", *SMOKE_SERIAL, "--storage-path", str(smoke_storage)],
                   smoke_storage.parent, timeout=600)


@pytest.fixture(scope="session")
def cnndm_prompt_smoke(smoke_storage):
    """A summarization smoke sweep of one method (prompt tuning, 3 trials), run once for every
    test that reads it (test_summarize_sweep, test_report). The tests check its exit code and
    read only."""
    return run_cli(REPO / "search" / "cnndm_summarize.py",
                   ["--smoke-test", "--method", "prompt", "--num-samples", "3",
                    "--storage-path", str(smoke_storage)], smoke_storage.parent, timeout=600)


def ray_tmpdir(tmp: Path) -> Path:
    """Ray's session dir for a CLI run. Kept short: Ray's socket paths must fit in 107 bytes."""
    short = Path(tempfile.gettempdir()) / f"rt{abs(hash(str(tmp))) % 10**8}"
    return short


def cli_env(tmp: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "RAY_TMPDIR": str(ray_tmpdir(tmp)),
                "PYTHONUNBUFFERED": "1", **extra})
    return env


def run_cli(script: Path, args: list[str], tmp: Path, timeout: float = 600, **env):
    """Run an entry script; the result also says whether Ray started (its session dir)."""
    try:
        proc = subprocess.run([sys.executable, str(script), *args], cwd=tmp,
                              env=cli_env(tmp, **env), capture_output=True, text=True,
                              timeout=timeout)
        proc.ray_started = ray_tmpdir(tmp).exists()
        return proc
    finally:
        shutil.rmtree(ray_tmpdir(tmp), ignore_errors=True)


class InProcessResult:
    """What ``run_main`` saw: the exit code, the captured output, and whether Ray started."""

    def __init__(self, returncode, stdout, stderr, ray_started, ray_init_calls):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        # ray.init was called, Ray is still up, or a Ray session dir appeared under RAY_TMPDIR
        self.ray_started = ray_started
        self.ray_init_calls = ray_init_calls  # the kwargs of every ray.init call


def _ray_sessions(root: Path) -> set:
    """Ray's session dirs under a RAY_TMPDIR (``<root>/ray/session_*``)."""
    return {*root.glob("session_*"), *root.glob("*/session_*")}


def run_main(script: Path, args: list[str], tmp: Path, monkeypatch, capsys, **env):
    """``main(args)`` of an entry script in this process, as ``run_cli`` runs the script in a
    fresh one (cwd ``tmp``, the environment of ``cli_env``, the Ray session dir removed after),
    without paying the torch/transformers/peft/Ray imports again (about 10 s a process on two
    cores). Bad input must exit 2 before any work: ``ray_started`` says whether ``ray.init``
    was called, Ray is up, or a Ray session dir appeared. A sweep that runs starts a real local
    Ray from this process, as the script would. An argparse error (SystemExit) counts with its
    code.

    Everything the command changes in this process is undone afterwards, so no later test
    inherits it: the environment (``quiet_libraries`` sets variables), ``sys.path``,
    ``sys.argv``, the cwd, the warnings filters, the SIGINT/SIGUSR1/SIGTERM handlers (Tune and
    the CLI install their own), the hub-probe cache, and a Ray it started or joined is shut down."""
    import importlib
    import signal
    import warnings

    import ray

    from models import hf

    saved_env, saved_path = dict(os.environ), list(sys.path)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1, signal.SIGTERM)}
    module = importlib.import_module(f"search.{Path(script).stem}")
    session_dir = ray_tmpdir(tmp)
    existed = session_dir.exists()
    sessions_before = _ray_sessions(session_dir)
    init_calls = []
    real_init = ray.init

    def spy_init(*a, **kw):
        init_calls.append(kw)
        return real_init(*a, **kw)

    monkeypatch.chdir(tmp)
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    monkeypatch.setattr(ray, "init", spy_init)
    for k, v in cli_env(tmp, **env).items():
        if os.environ.get(k) != v:
            monkeypatch.setenv(k, v)
    hf.hub_reachable.cache_clear()  # probed afresh under this environment (HF_HUB_OFFLINE)
    capsys.readouterr()  # drop anything printed before
    try:
        with warnings.catch_warnings():
            try:
                code = module.main(list(args))
            except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        up = ray.is_initialized()
        new_sessions = _ray_sessions(session_dir) - sessions_before
        started = (bool(init_calls) or up or bool(new_sessions)
                   or (session_dir.exists() and not existed))
        return InProcessResult(code, out.out, out.err, started, init_calls)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        hf.hub_reachable.cache_clear()
        for k in set(os.environ) - set(saved_env):
            del os.environ[k]
        for k, v in saved_env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
        sys.path[:] = saved_path
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        shutil.rmtree(session_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg():
    """A PostgreSQL server for the session (tests/postgres.py); skips, saying why, when the
    server binaries or the driver are absent."""
    import postgres

    why = postgres.missing()
    if why:
        pytest.skip(why)
    server = postgres.start_server()
    yield server
    server.stop("immediate")


def read_table(path, **kwargs):
    """A table the sweep wrote, trial ids as text: Tune's ids are 8 hex digits, and one made of
    digits only would otherwise be read as a number (a one-trial table, then, has no id to find
    by its text)."""
    import pandas as pd

    return pd.read_csv(path, dtype={"trial_id": str}, **kwargs)
