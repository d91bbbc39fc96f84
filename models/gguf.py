"""GGUF model files (llama.cpp's format) as ordinary Hugging Face model directories.

transformers reads a GGUF file with ``from_pretrained(dir, gguf_file=name)`` and dequantizes
it to float tensors, but the model it returns stays marked as quantized and refuses
``save_pretrained``, and every load dequantizes again. So a file is converted once: its
weights are copied into a freshly built model of the same config, saved with its tokenizer
under ``<cache>/gguf/<sha256[:16]>/``, and every later run (and every Ray worker)
loads that directory. The key is the file's content, so a renamed copy reuses the
conversion and a changed file gets a new one.

The cache root is ``$PEFT_SWEEPS_CACHE`` or ``$XDG_CACHE_HOME/peft-sweeps`` (default
``~/.cache/peft-sweeps``)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from models.console import Heartbeat
from models.errors import InputError

MAGIC = b"GGUF"
DONE = "conversion.json"  # written last: a directory without it is an interrupted conversion


def cache_root() -> Path:
    if os.environ.get("PEFT_SWEEPS_CACHE"):
        return Path(os.environ["PEFT_SWEEPS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "peft-sweeps"


def is_gguf(name: str) -> bool:
    """A path that names a GGUF file: by extension, or by the file's magic bytes."""
    p = Path(name).expanduser()
    if name.lower().endswith(".gguf"):
        return True
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == MAGIC


def _print_err(msg: str, flush: bool = True) -> None:
    print(msg, file=sys.stderr, flush=flush)


def _say(msg: str) -> None:
    print(f"[gguf] {msg}", file=sys.stderr, flush=True)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def inspect(path: Path, flag: str) -> dict:
    """The file's architecture and tensor count, read with the ``gguf`` package; InputError
    for a file that is not GGUF, is cut short, or names an architecture transformers cannot
    dequantize."""
    if not path.is_file():
        raise InputError(f"{flag} {str(path)!r}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise InputError(f"{flag} {str(path)!r}: not a GGUF file (it starts with {head!r}, "
                         f"a GGUF file with {MAGIC!r})")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise InputError(f"{flag} {str(path)!r}: reading GGUF files needs the gguf package "
                         "(pip install gguf)") from None
    try:
        reader = GGUFReader(str(path))
        arch = reader.fields["general.architecture"].contents()
        n_tensors = len(reader.tensors)
    except Exception as e:  # numpy raises ValueError/IndexError/KeyError on a cut file
        raise InputError(f"{flag} {str(path)!r}: not a readable GGUF file "
                         f"(truncated or damaged: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    if arch not in GGUF_CONFIG_MAPPING:
        raise InputError(f"{flag} {str(path)!r}: architecture {arch!r} cannot be dequantized by "
                         f"transformers (it reads: {', '.join(sorted(GGUF_CONFIG_MAPPING))})")
    return {"architecture": arch, "tensors": n_tensors}


def convert(name: str, *, flag: str = "--model", cache: Path | None = None) -> str:
    """-> the directory of the converted model (converting ``name`` first if needed)."""
    path = Path(name).expanduser().resolve()
    info = inspect(path, flag)
    t0 = time.perf_counter()
    digest = file_digest(path)
    out = (cache or cache_root()) / "gguf" / digest[:16]
    if (out / DONE).is_file():
        _say(f"{path.name}: using the conversion in {out}")
        return str(out)
    _say(f"{path.name}: {info['architecture']}, {info['tensors']} tensors, "
         f"{path.stat().st_size / 2**20:.0f} MiB; converting once to a model directory "
         f"(sha256 {digest[:16]}, {time.perf_counter() - t0:.1f} s so far)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _convert_into(path, tmp, flag)
        (tmp / DONE).write_text(json.dumps({
            "source": path.name, "sha256": digest, "architecture": info["architecture"],
            "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
        if out.exists():  # an interrupted earlier conversion
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(f"{path.name}: converted in {time.perf_counter() - t0:.0f} s -> {out}")
    return str(out)


def _convert_into(path: Path, out: Path, flag: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = str(path.parent), path.name
    try:
        _say(f"{f}: reading the tokenizer")
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        with Heartbeat(f"[gguf] {f}: dequantizing the weights", out=_print_err):
            loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    except Exception as e:
        raise InputError(f"{flag} {str(path)!r}: transformers could not load it "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                         ) from None
    config = loaded.config
    # The config transformers builds from GGUF metadata carries the source file; it is not a
    # quantization config, but drop anything that would make the copy look quantized.
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    fresh.tie_weights()
    missing = [n for n, p in fresh.named_parameters() if p.is_meta]
    if missing:
        raise InputError(f"{flag} {str(path)!r}: the file has no weights for {missing[:3]}")
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    fresh.save_pretrained(out)
    tok.save_pretrained(out)
