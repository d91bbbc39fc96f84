"""The students and their data for bench/packed_students.py: a seeded ``GRUStudent``, sentence
lengths (CoLA's, or drawn like them), each student's length-grouped batches with synthetic
token ids, labels and teacher logits, K slots' batches stacked into one packed batch, and the
device sync the timings wait on."""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.data.batching import epoch_order, pad_batch  # noqa: E402
from models.student import GRUStudent  # noqa: E402

PAD_ID = 0
# CoLA's training sentences under the SmolLM2 tokenizer: log of the token count ~ normal
# (mean, sd), within [min, max] tokens.
COLA_LOG_MEAN, COLA_LOG_SD, COLA_MIN, COLA_MAX = 2.17, 0.39, 2, 46
COLA_TRAIN_ROWS = 7696  # the fit split: 90 % of CoLA's in-domain training rows


# --------------------------------------------------------------------------- the students

def make_student(args, seed: int, device: torch.device) -> GRUStudent:
    torch.manual_seed(seed)
    return GRUStudent(vocab_size=args.vocab_size, embed_dim=args.embed_dim,
                      hidden_size=args.hidden_size, num_layers=args.num_layers,
                      bidirectional=args.bidirectional, dropout=args.dropout,
                      pad_token_id=PAD_ID).to(device).train()


# --------------------------------------------------------------------------- data

def sentence_lengths(data_dir: str | None) -> np.ndarray:
    """Token counts of the training sentences: CoLA's from --data-dir (words and punctuation
    marks), else drawn like them."""
    if data_dir:
        from models.data.cola import load_cola_dir

        texts = load_cola_dir(data_dir).train_text
        return np.array([max(1, len(re.findall(r"\w+|[^\w\s]", t))) for t in texts])
    rng = np.random.default_rng(12345)
    raw = np.exp(rng.normal(COLA_LOG_MEAN, COLA_LOG_SD, COLA_TRAIN_ROWS))
    return np.clip(np.rint(raw), COLA_MIN, COLA_MAX).astype(int)


def slot_batches(lengths: np.ndarray, args, seed: int, count: int, device) -> list[dict]:
    """``count`` full training batches of one student: a length-grouped shuffle of the
    sentences (its own seed), synthetic token ids, labels and teacher logits."""
    rng = np.random.default_rng(seed)
    order = epoch_order(lengths, batch_size=args.batch_size, seed=seed, group_by_length=True)
    full = len(lengths) // args.batch_size  # the partial last batch would not stack
    out = []
    for j in range(count):
        chunk = order[(j % full) * args.batch_size: (j % full + 1) * args.batch_size]
        ids, mask = pad_batch([rng.integers(1, args.vocab_size, lengths[i]) for i in chunk], PAD_ID)
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device),
                    "labels": torch.from_numpy(rng.integers(0, 2, len(chunk))).to(device),
                    "teacher_logits": torch.from_numpy(
                        rng.normal(0, 2, (len(chunk), 2)).astype(np.float32)).to(device)})
    return out


def slot_seed(args, index: int) -> int:
    """The data seed of student ``index``: the sweep's one seed, or its own."""
    return index if args.batch_order == "own" else 0


def stack_batches(per_slot: list[dict]) -> dict:
    """K slots' batches -> one packed batch [K, B, L_max] (right padding to the longest)."""
    width = max(b["input_ids"].shape[1] for b in per_slot)
    out = {}
    for key in ("input_ids", "attention_mask"):
        out[key] = torch.stack([F.pad(b[key], (0, width - b[key].shape[1]),
                                      value=PAD_ID if key == "input_ids" else 0) for b in per_slot])
    for key in ("labels", "teacher_logits"):
        out[key] = torch.stack([b[key] for b in per_slot])
    return out


def fixed_length_batch(args, k: int, width: int, device) -> list[dict]:
    """K batches whose sentences all have ``width`` tokens (for the per-time-step count)."""
    lengths = np.full(args.batch_size * 2, width)
    return [slot_batches(lengths, args, seed=slot_seed(args, i), count=1, device=device)[0]
            for i in range(k)]


# --------------------------------------------------------------------------- device

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
