"""What every result and checkpoint records about where it came from: git commit and versions."""
from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "ray", "optuna", "datasets", "tokenizers")
REPO_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if commit != "unknown" and dirty.stdout.strip():
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def package_versions() -> str:
    """One compact string, e.g. ``torch=2.13.0;transformers=5.2.0``, cheap to put in every row."""
    parts = []
    for name in PACKAGES:
        try:
            parts.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name}=missing")
    return ";".join(parts)


def provenance() -> dict:
    return {"git_commit": git_commit(), "versions": package_versions()}
