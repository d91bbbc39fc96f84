"""Batches of variable-length token ids, padded to the longest sequence in each batch."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def pad_batch(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids [B, L_max], attention_mask [B, L_max] (right padding)."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def classification_batches(ids: list[np.ndarray], labels: np.ndarray, *, batch_size: int,
                           pad_id: int, shuffle_seed: int | None = None,
                           extra: dict[str, np.ndarray] | None = None) -> Iterator[dict]:
    """Yield dicts of input_ids, attention_mask, labels (and one tensor per ``extra`` array,
    row-aligned with ``ids``, e.g. teacher logits). Shuffled when a seed is given (the loop
    passes seed+epoch so every epoch has its own, reproducible order)."""
    order = np.arange(len(ids))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in chunk], pad_id)
        batch = {"input_ids": input_ids, "attention_mask": mask,
                 "labels": torch.from_numpy(np.asarray(labels[chunk], dtype=np.int64))}
        for key, values in (extra or {}).items():
            batch[key] = torch.from_numpy(np.ascontiguousarray(values[chunk]))
        yield batch
