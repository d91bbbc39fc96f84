"""Loading Hugging Face models and tokenizers from a hub id or a local directory, with a clear
error when the hub cannot be reached (offline machines pass ``--model PATH``)."""
from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from models.errors import InputError


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP probe of the hub, so an offline machine fails in seconds instead of
    sitting through the hub client's retries. HF_HUB_OFFLINE=1 counts as unreachable."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline_if_unreachable() -> bool:
    """When the hub is unreachable, switch the HF libraries to their local caches (must run
    before they are imported to take effect everywhere). Returns whether we are online."""
    online = hub_reachable()
    if not online:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    return online


def load_hub_dataset(path: str, name: str, *, what: str, offline_hint: str):
    """``datasets.load_dataset(path, name)``; any failure (network, DNS, missing cache) is an
    InputError that says what to pass instead (``offline_hint`` names --data-dir)."""
    go_offline_if_unreachable()
    try:
        import datasets

        return datasets.load_dataset(path, name)
    except Exception as e:
        raise InputError(
            f"could not load {what} from the dataset hub ({path}, {name}): {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}. Offline, {offline_hint}") from None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def resolve_model(name: str, flag: str = "--model") -> str:
    """Return a loadable name or path, or raise InputError naming the flag and value. A GGUF
    file is converted once into a cached model directory, whose path is returned."""
    from models.gguf import convert, is_gguf

    if is_gguf(name):
        return convert(name, flag=flag)
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InputError(f"{flag} {name!r}: directory has no config.json "
                             "(expected a saved Hugging Face model)")
        return str(p.resolve())
    if _looks_like_path(name):
        raise InputError(f"{flag} {name!r}: no such model directory")
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(name, local_files_only=not hub_reachable())
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{flag} {name!r}: not a local directory, and the model hub could not provide it "
            f"({first}). Offline, pass {flag} PATH to a saved model directory") from None
    return name


def load_tokenizer(name: str):
    """Tokenizer with a pad token (GPT-2 has none: reuse EOS, as its classifier expects)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise InputError(f"--model {name!r}: tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def load_sequence_classifier(name: str, *, num_labels: int, pad_token_id: int, meta: bool = False):
    """AutoModelForSequenceClassification with ``pad_token_id`` set, so GPT-2-style models
    read the last real token. ``meta=True`` builds the architecture without weights (for
    counting parameters and checking adapter targets before any training starts)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(name, num_labels=num_labels)
    config.pad_token_id = pad_token_id
    if meta:
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(name, config=config)


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": int(trainable), "total_params": int(total)}
