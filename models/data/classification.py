"""A classification task's data, whatever the task: sentences and integer labels of a training
set and a dev set (``TextSplits``), the honest selection split (a seeded, stratified slice of
the training set that scores sweep trials, so dev never picks hyperparameters), and the token
ids computed once per sweep (``ClassificationData``, the object every trial gets through
``tune.with_parameters``). Dev rows may carry a group each (CoLA: in-domain and out-of-domain),
which adds one named split per group."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.errors import InputError

MIN_PER_CLASS = 1  # rows of each class in the fit and in the selection split, at least


@dataclass
class TextSplits:
    """Texts and integer labels. ``dev_groups``: one group name per dev row, when the task
    has them (CoLA: "in" / "out" of domain), else None."""

    train_text: list[str]
    train_labels: list[int]
    dev_text: list[str]
    dev_labels: list[int]
    dev_groups: list[str] | None
    origin: str


def selection_split(labels: list[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, select): a seeded, stratified hold-out slice of the training set. Trials
    are scored on `select`; GLUE dev is kept for reporting the retrained configurations."""
    from sklearn.model_selection import train_test_split

    counts = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
    # Each class needs rows on both sides: some to learn from, some to be scored on (MCC
    # needs both classes in the selection split).
    short = len(counts) < 2 or any(n * fraction < MIN_PER_CLASS or n * (1 - fraction) < MIN_PER_CLASS
                                   for n in counts.values())
    problem = (f"training set: {len(labels)} rows, per class {counts}; with --selection-fraction "
               f"{fraction:g} every class needs at least {MIN_PER_CLASS} row(s) in both the fit "
               "and the selection split, and there must be two classes: add training rows or "
               "raise --selection-fraction")
    if short:
        raise InputError(problem)
    idx = np.arange(len(labels))
    try:
        fit, sel = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as e:  # sklearn's own limits of a stratified split
        raise InputError(f"{problem} ({e})") from None
    return np.sort(fit), np.sort(sel)


@dataclass
class ClassificationData:
    """Token ids of every text, computed once per sweep (unpadded; batches pad dynamically).

    ``train_ids[i]`` is an int32 array of sentence i's tokens; ``fit_idx``/``select_idx`` index
    into the training set."""

    train_ids: list[np.ndarray]
    train_labels: np.ndarray
    fit_idx: np.ndarray
    select_idx: np.ndarray
    dev_ids: list[np.ndarray]
    dev_labels: np.ndarray
    dev_groups: np.ndarray | None
    pad_token_id: int
    origin: str
    meta: dict = field(default_factory=dict)

    def indices(self, name: str) -> np.ndarray:
        """Row numbers of a named split within its source (training set or dev):
        fit, select, train (all), dev, and dev_<group> per dev group."""
        if name == "train":
            return np.arange(len(self.train_ids))
        if name in ("fit", "select"):
            return self.fit_idx if name == "fit" else self.select_idx
        if name == "dev":
            return np.arange(len(self.dev_ids))
        if name.startswith("dev_") and name[4:] in self.groups():
            return np.flatnonzero(self.dev_groups == name[4:])
        raise KeyError(name)

    def groups(self) -> list[str]:
        """The dev groups, in order of first appearance ([] when the task has none)."""
        return [] if self.dev_groups is None else list(dict.fromkeys(self.dev_groups.tolist()))

    def dev_splits(self) -> list[str]:
        """The reported splits: dev, then one per dev group."""
        return ["dev"] + [f"dev_{g}" for g in self.groups()]

    def split(self, name: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(ids, labels) of a named split (see ``indices``)."""
        idx = self.indices(name)
        ids, labels = (self.dev_ids, self.dev_labels) if name.startswith("dev") else \
            (self.train_ids, self.train_labels)
        return [ids[i] for i in idx], labels[idx]

    def majority_baseline(self) -> dict:
        """Accuracy of always predicting the training set's most frequent label (MCC is 0 by
        definition), on the selection split (``val_``) and dev (``dev_``)."""
        majority = np.bincount(self.train_labels).argmax()
        out = {"val_mcc": 0.0, "dev_mcc": 0.0}
        for prefix, split in (("val", "select"), ("dev", "dev")):
            _, labels = self.split(split)
            out[f"{prefix}_accuracy"] = float(np.mean(labels == majority))
        return out


def tokenize_splits(splits: TextSplits, tokenizer, *, selection_fraction: float, seed: int,
                    max_length: int = 128, max_train_samples: int | None = None
                    ) -> ClassificationData:
    """Tokenize every text once and draw the selection split. ``max_length`` must fit the
    context of the model the tokenizer belongs to (its ``name_or_path``: the model directory,
    a teacher's, or an adapter's base), which would fail on any longer sentence."""
    from models.hf import model_context

    owner = getattr(tokenizer, "name_or_path", None)  # None: nothing says which model reads it
    context = model_context(owner) if owner else None
    if context is not None and max_length > context:
        raise InputError(f"--max-length {max_length}: longer than the context of the model at "
                         f"{owner} ({context} positions); allowed: 1 to {context}")
    train_text, train_labels = splits.train_text, splits.train_labels
    if max_train_samples is not None and max_train_samples < len(train_text):
        # A seeded, stratified subsample keeps the class balance of quick runs honest.
        keep, _ = selection_split(train_labels, 1 - max_train_samples / len(train_text), seed)
        train_text = [train_text[i] for i in keep]
        train_labels = [train_labels[i] for i in keep]
    fit, sel = selection_split(train_labels, selection_fraction, seed)

    def ids(texts):
        enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return [np.asarray(x, dtype=np.int32) for x in enc]

    return ClassificationData(
        train_ids=ids(train_text), train_labels=np.asarray(train_labels, dtype=np.int64),
        fit_idx=fit, select_idx=sel,
        dev_ids=ids(splits.dev_text), dev_labels=np.asarray(splits.dev_labels, dtype=np.int64),
        dev_groups=None if splits.dev_groups is None else np.asarray(splits.dev_groups),
        pad_token_id=int(tokenizer.pad_token_id), origin=splits.origin,
        meta={"train_rows": len(train_text), "fit_rows": len(fit), "select_rows": len(sel),
              "dev_rows": len(splits.dev_text)},
    )
