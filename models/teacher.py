"""The distillation teacher: loaded once in the driver, run once over every sentence.

A teacher directory is either an adapter saved by the LoRA retrain (``adapter_config.json``
naming its base model) or any saved sequence-classification model. Its logits for the training
set and GLUE dev are computed up front, batched and without gradients, and shipped to trials;
no trial ever runs the teacher."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from models.data.batching import classification_batches
from models.console import bar
from models.errors import InputError



def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def dir_size_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())


def load_teacher(path: str):
    """-> (model in eval mode, tokenizer, description). Bad directories raise InputError."""
    from models.hf import load_tokenizer, resolve_model

    d = Path(path).expanduser()
    if not d.is_dir():
        raise InputError(f"--teacher {path!r}: no such directory")
    adapter = d / "adapter_config.json"
    try:
        if adapter.is_file():
            from peft import PeftModel
            from transformers import AutoModelForSequenceClassification

            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
            if not base:
                raise InputError(f"--teacher {path!r}: adapter_config.json names no base model")
            base = resolve_model(base, flag=f"--teacher {path!r} base model")
            tokenizer = load_tokenizer(str(d) if _has_tokenizer(d) else base)
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=2, pad_token_id=tokenizer.pad_token_id)
            model = PeftModel.from_pretrained(model, str(d))
            size = dir_size_bytes(d) + (dir_size_bytes(Path(base)) if Path(base).is_dir() else 0)
            kind = f"LoRA adapter on {base}"
        elif (d / "config.json").is_file():
            from transformers import AutoConfig, AutoModelForSequenceClassification

            labels = AutoConfig.from_pretrained(str(d)).num_labels
            if labels != 2:
                raise InputError(f"--teacher {path!r}: the model has {labels} labels; "
                                 "distillation on CoLA needs a 2-label classifier")
            tokenizer = load_tokenizer(str(d))
            model = AutoModelForSequenceClassification.from_pretrained(
                str(d), pad_token_id=tokenizer.pad_token_id)
            size, kind = dir_size_bytes(d), "sequence classifier"
        else:
            raise InputError(f"--teacher {path!r}: neither adapter_config.json nor config.json "
                             "found (expected a LoRA retrain output or a saved classifier)")
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


@torch.inference_mode()
def teacher_logits(model, ids: list[np.ndarray], *, pad_id: int, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, float]:
    """One batched pass: -> (logits [N, 2] float32, sentences per second)."""
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
