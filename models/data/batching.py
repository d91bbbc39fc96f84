"""Batches of variable-length token ids, padded to the longest sequence in each batch, and the
orders that keep that padding small: length-grouped shuffles for training (each batch holds
sentences of similar length, so little of every matmul is spent on padding) and a length sort
for evaluation (whose order does not matter)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

# A megabatch of MEGA batches is shuffled as a whole, then sorted by length: batches are
# length-homogeneous, yet every epoch mixes differently (transformers' LengthGroupedSampler
# uses the same factor).
MEGA = 50


def pad_batch(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids [B, L_max], attention_mask [B, L_max] (right padding)."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def epoch_order(lengths: np.ndarray, *, batch_size: int, seed: int | None,
                group_by_length: bool = True) -> np.ndarray:
    """The order of one epoch's examples (every index exactly once).

    seed None: as given. Otherwise a seeded permutation; with ``group_by_length`` it is cut
    into megabatches of MEGA x batch_size, each sorted longest first, and the resulting batches
    are shuffled (the one holding the longest example goes first, so a too-large batch fails
    at once rather than late in the epoch). Batch boundaries stay every ``batch_size``
    positions, so the number of batches is ceil(n / batch_size) either way."""
    n = len(lengths)
    if seed is None:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if not group_by_length or n <= batch_size:
        return order
    lengths = np.asarray(lengths)
    step = MEGA * batch_size
    order = np.concatenate([m[np.argsort(-lengths[m], kind="stable")]
                            for m in (order[i: i + step] for i in range(0, n, step))])
    batches = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    last = batches.pop()  # the only possibly partial batch stays last
    perm = rng.permutation(len(batches))
    longest = int(np.argmax([lengths[b].max() for b in batches])) if batches else 0
    perm = np.concatenate([[longest], perm[perm != longest]]).astype(int)
    return np.concatenate([*(batches[i] for i in perm), last])


def classification_batches(ids: list[np.ndarray], labels: np.ndarray, *, batch_size: int,
                           pad_id: int, shuffle_seed: int | None = None,
                           group_by_length: bool = False, order: np.ndarray | None = None,
                           extra: dict[str, np.ndarray] | None = None) -> Iterator[dict]:
    """Yield dicts of input_ids, attention_mask, labels (and one tensor per ``extra`` array,
    row-aligned with ``ids``, e.g. teacher logits). Shuffled when a seed is given (the loop
    passes seed+epoch so every epoch has its own, reproducible order), length-grouped too with
    ``group_by_length``; ``order`` gives the order outright (e.g. ``length_sorted``)."""
    if order is None:
        order = epoch_order(np.fromiter((len(s) for s in ids), int, len(ids)),
                            batch_size=batch_size, seed=shuffle_seed,
                            group_by_length=group_by_length)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in chunk], pad_id)
        batch = {"input_ids": input_ids, "attention_mask": mask,
                 "labels": torch.from_numpy(np.asarray(labels[chunk], dtype=np.int64))}
        for key, values in (extra or {}).items():
            batch[key] = torch.from_numpy(np.ascontiguousarray(values[chunk]))
        yield batch


def length_sorted(ids: list) -> tuple[np.ndarray, np.ndarray]:
    """(order, inverse): evaluation batches sorted by length, and the permutation that puts
    their outputs back in the original order (``outputs[inverse]``)."""
    order = np.argsort([len(s) for s in ids], kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return order, inverse
