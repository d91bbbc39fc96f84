"""Loading Hugging Face models and tokenizers from a hub id or a local directory, with a clear
error when the hub cannot be reached (offline machines pass ``--model PATH``)."""
from __future__ import annotations

import functools
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from models.errors import InputError

# Weight files transformers reads, single or sharded (an index names the shards).
WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
PT_WEIGHTS, PT_WEIGHTS_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json, or tokenizer_config.json with vocab.json + merges.txt or "
                   "tokenizer.model")
# Config attributes that give a model's context (GPT-2: n_positions; most others the second).
CONTEXT_KEYS = ("n_positions", "max_position_embeddings")
# Any real tokenizer turns this into tokens; an empty vocabulary gives none.
PROBE = "The cat sat on the mat."


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
    file is converted once into a cached model directory, whose path is returned. A local
    directory is checked here, once, rather than failing in every trial: a config
    transformers can read, and whole weight files."""
    from models.gguf import convert, is_gguf

    if is_gguf(name):
        return convert(name, flag=flag)
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InputError(f"{flag} {name!r}: directory has no config.json "
                             "(expected a saved Hugging Face model)")
        check_config(p, flag=flag, name=name)
        check_weights(p, flag=flag, name=name)
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


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold one object; InputError (``what`` names the flag and value)
    for broken JSON, with its line and column, or for another kind of value."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{what}: {path.name} is not valid JSON ({e.msg} at line {e.lineno} "
                         f"column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what}: {path.name} cannot be read ({e})") from None
    if not isinstance(value, dict):
        raise InputError(f"{what}: {path.name} holds a JSON {type(value).__name__}; expected "
                         "an object of settings")
    return value


def check_config(d: Path, *, flag: str, name: str):
    """-> the config of ``d``, whose config.json must be a JSON object that transformers can
    build a config from."""
    from transformers import AutoConfig

    read_json_object(d / "config.json", f"{flag} {name!r}")
    try:
        return AutoConfig.from_pretrained(str(d))
    except (OSError, ValueError, TypeError, KeyError) as e:  # no or unknown model_type, ...
        raise InputError(f"{flag} {name!r}: not a model transformers can load (config.json: "
                         f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
                         ) from None


def _weight_files(d: Path, single: str, index: str, what: str) -> list[Path] | None:
    """The weight files of one format in ``d`` (a sharded checkpoint's from its index), or
    None when the directory has neither the single file nor the index."""
    if (d / single).is_file():
        return [d / single]
    if not (d / index).is_file():
        return None
    weight_map = read_json_object(d / index, what).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{what}: {index} has no weight_map (tensor name -> shard file)")
    return [d / f for f in sorted(set(map(str, weight_map.values())))]


def safetensors_keys(path: Path, what: str) -> list[str]:
    """The tensor names of a safetensors file. Opening it reads the header and checks that
    the file covers every tensor it lists, so a cut-short or damaged copy is an InputError
    here and not in every trial."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise InputError(f"{what}: {path.name} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise InputError(f"{what}: {path.name} is damaged or cut short ({str(e)[:200]}); "
                         "save or copy the model again") from None


def check_weights(d: Path, *, flag: str, name: str) -> None:
    """``d`` holds weights (safetensors or PyTorch, single or sharded), and every safetensors
    file is whole. PyTorch .bin files are only checked to exist: reading one is a full load."""
    what = f"{flag} {name!r}"
    formats = ((WEIGHTS, WEIGHTS_INDEX), (PT_WEIGHTS, PT_WEIGHTS_INDEX))
    for single, index in formats:
        files = _weight_files(d, single, index, what)
        if files is None:
            continue
        for f in files:
            if f.suffix == ".safetensors":
                safetensors_keys(f, what)
            elif not f.is_file():
                raise InputError(f"{what}: {f.name} is missing")
        return
    names = ", ".join(n for pair in formats for n in pair)
    raise InputError(f"{what}: the directory has no model weights (expected one of {names})")


def model_context(name: str) -> int | None:
    """Positions the model reads at most (its config's n_positions or
    max_position_embeddings); an adapter directory's are its base model's. None when there
    is no readable config or it does not say."""
    from transformers import AutoConfig

    p = Path(name).expanduser()
    if (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
        try:
            name = json.loads((p / "adapter_config.json").read_text())["base_model_name_or_path"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    try:
        cfg = AutoConfig.from_pretrained(name)
    except Exception:  # no config there (a tokenizer-only directory): nothing to check against
        return None
    return config_context(cfg)


def config_context(cfg) -> int | None:
    """The context a model config gives (see CONTEXT_KEYS), or None."""
    return next((getattr(cfg, k) for k in CONTEXT_KEYS
                 if isinstance(getattr(cfg, k, None), int)), None)


def load_tokenizer(name: str, flag: str = "--model"):
    """Tokenizer with a pad token (GPT-2 has none: reuse EOS, as its classifier expects).
    A directory without tokenizer files gives transformers an empty vocabulary, which turns
    every sentence into no tokens at all: that is an InputError here."""
    from transformers import AutoTokenizer

    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise InputError(f"{flag} {name!r}: no such directory")
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # the hub client's and every tokenizer class's own errors
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(f"{flag} {name!r}: no tokenizer could be loaded ({why}); expected "
                         f"{TOKENIZER_FILES}") from None
    if not tok(PROBE, add_special_tokens=False)["input_ids"]:
        raise InputError(f"{flag} {name!r}: its tokenizer turns text into no tokens (vocabulary "
                         f"of {len(tok)}): no tokenizer files there? Expected {TOKENIZER_FILES}")
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise InputError(f"{flag} {name!r}: tokenizer has neither a pad nor an EOS token")
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
