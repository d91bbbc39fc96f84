"""The distillation teacher: loaded once in the driver, run once over every sentence.

A teacher directory is either an adapter saved by the LoRA retrain (``adapter_config.json``
naming its base model) or any saved sequence-classification model. Its logits for the training
set and GLUE dev are computed up front, batched and without gradients, and shipped to trials;
no trial ever runs the teacher."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from models.data.batching import classification_batches
from models.console import bar
from models.errors import InputError

SEQ_CLS = "SEQ_CLS"  # peft's task type of a sequence-classification adapter
ADAPTER_WEIGHTS, ADAPTER_PT_WEIGHTS = "adapter_model.safetensors", "adapter_model.bin"


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def dir_size_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())


def load_teacher(path: str):
    """-> (model in eval mode, tokenizer, description). Bad directories raise InputError."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise InputError(f"--teacher {path!r}: no such directory")
    try:
        if (d / "adapter_config.json").is_file():
            model, tokenizer, kind, size = _adapter_teacher(path, d)
        elif (d / "config.json").is_file():
            model, tokenizer, kind, size = _classifier_teacher(path, d)
        else:
            raise InputError(f"--teacher {path!r}: neither adapter_config.json nor config.json "
                             "found (expected a LoRA retrain output or a saved classifier)")
    except InputError:
        raise
    except OSError as e:
        raise InputError(f"--teacher {path!r}: cannot be read ({str(e).splitlines()[0][:200]})") from None
    except ValueError as e:  # AutoConfig: no or unknown model_type in config.json
        raise InputError(f"--teacher {path!r}: not a model transformers can load "
                         f"({str(e).splitlines()[0][:200]})") from None
    except RuntimeError as e:  # the adapter's saved head does not fit a 2-label classifier
        if "size mismatch" not in str(e):
            raise
        shapes = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln][:1]
        raise InputError(f"--teacher {path!r}: the adapter's weights do not fit a 2-label "
                         f"classifier on its base model ({shapes[0][:200] if shapes else ''}); "
                         "distillation on CoLA needs a 2-label teacher") from None
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    return model, tokenizer, {"kind": kind, "params": int(params), "size_bytes": int(size)}


def _classifier_teacher(path: str, d: Path):
    """A saved sequence classifier: 2 labels, whole weights, and a trained head (a base
    language model loads too, with a randomly initialised head: its logits are noise)."""
    from transformers import AutoModelForSequenceClassification

    from models.hf import check_config, check_weights, load_tokenizer

    labels = check_config(d, flag="--teacher", name=path).num_labels
    if labels != 2:
        raise InputError(f"--teacher {path!r}: the model has {labels} labels; "
                         "distillation on CoLA needs a 2-label classifier")
    check_weights(d, flag="--teacher", name=path)
    tokenizer = load_tokenizer(str(d), flag="--teacher")
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(d), pad_token_id=tokenizer.pad_token_id, output_loading_info=True)
    _refuse_untrained(path, sorted(info["missing_keys"]), "its checkpoint")
    return model, tokenizer, "sequence classifier", dir_size_bytes(d)


def _adapter_teacher(path: str, d: Path):
    """An adapter saved by a sequence-classification fine-tune: its base model loaded as a
    2-label classifier, whose new head weights the adapter file must hold."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from models.hf import load_tokenizer, read_json_object, resolve_model

    config = read_json_object(d / "adapter_config.json", f"--teacher {path!r}")
    base = config.get("base_model_name_or_path")
    if not base:
        raise InputError(f"--teacher {path!r}: adapter_config.json names no base model")
    task = config.get("task_type")
    if task not in (None, SEQ_CLS):
        raise InputError(f"--teacher {path!r}: an adapter for task_type {task!r}; distillation "
                         f"needs a sequence-classification adapter (task_type {SEQ_CLS!r})")
    saved = _adapter_keys(path, d)
    base = resolve_model(base, flag=f"--teacher {path!r} base model")
    tokenizer = (load_tokenizer(str(d), flag="--teacher") if _has_tokenizer(d) else
                 load_tokenizer(base, flag=f"--teacher {path!r} base model"))
    model, info = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, pad_token_id=tokenizer.pad_token_id, output_loading_info=True)
    if saved is not None:  # peft saves a head it trains as base_model.model.<name>
        _refuse_untrained(path, [k for k in sorted(info["missing_keys"])
                                 if not any(s.endswith(f".{k}") for s in saved)],
                          "its base model or the adapter")
    model = PeftModel.from_pretrained(model, str(d))
    size = dir_size_bytes(d) + (dir_size_bytes(Path(base)) if Path(base).is_dir() else 0)
    return model, tokenizer, f"LoRA adapter on {base}", size


def _adapter_keys(path: str, d: Path) -> list[str] | None:
    """Tensor names in the adapter's weights file (its header: a cut-short file fails here);
    None for a PyTorch .bin, which only a full load would list."""
    from models.hf import safetensors_keys

    if (d / ADAPTER_WEIGHTS).is_file() or not (d / ADAPTER_PT_WEIGHTS).is_file():
        return safetensors_keys(d / ADAPTER_WEIGHTS, f"--teacher {path!r}")
    return None


def _refuse_untrained(path: str, missing: list[str], where: str) -> None:
    """Weights transformers had to initialise at random (the classification head of a base
    language model) make the teacher's logits noise: refuse it."""
    if missing:
        raise InputError(
            f"--teacher {path!r}: no weights for {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} in {where}, so they would start random (a "
            "base language model, not a fine-tuned classifier?); distillation needs a trained "
            "2-label classifier: a LoRA retrain output or a saved sequence classifier")


@torch.inference_mode()
def teacher_logits(model, ids: list[np.ndarray], *, pad_id: int, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, float]:
    """One batched pass: -> (logits [N, 2] float32, sentences per second)."""
    from models.hf import config_context

    # A tokenizer from elsewhere (--tokenizer) may not know the teacher's context: a longer
    # sentence would fail deep in the forward pass.
    context, longest = config_context(model.config), max(map(len, ids), default=0)
    if context is not None and longest > context:
        raise InputError(f"--max-length: a sentence of {longest} tokens is longer than the "
                         f"teacher's context of {context} positions; allowed: --max-length "
                         f"{context} or less")
    model.to(device)
    out = []
    t0 = time.perf_counter()
    batches = classification_batches(ids, np.zeros(len(ids), dtype=np.int64),
                                     batch_size=batch_size, pad_id=pad_id)
    for batch in bar(batches, total=-(-len(ids) // batch_size), desc="teacher logits",
                     unit="batch"):
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        if logits.shape[-1] != 2:
            raise InputError(f"--teacher: the model gives {logits.shape[-1]} labels; "
                             "distillation on CoLA needs 2")
        out.append(logits.float().cpu())
    rate = len(ids) / max(time.perf_counter() - t0, 1e-9)
    return torch.cat(out).numpy().astype(np.float32), rate
