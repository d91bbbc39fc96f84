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
    from models.cola_data import synthetic_cola

    return synthetic_cola()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, synthetic) -> str:
    from models.tiny import build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model",
                           synthetic.train_text + synthetic.dev_text)


@pytest.fixture(scope="session")
def shared_cola() -> Path:
    if not (SHARED_COLA / "raw" / "in_domain_train.tsv").is_file():
        pytest.skip(f"real CoLA sample not present at {SHARED_COLA}")
    return SHARED_COLA


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
