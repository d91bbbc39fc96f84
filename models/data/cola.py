"""CoLA loading: NYU's raw layout, GLUE's layout, the hub, and a generated stand-in set.

Owns reading and checking the files (a bad row is an ``InputError`` naming file and line), the
honest selection split (seeded, stratified slice of the training set), and tokenizing once per
sweep into ``ColaData``, the object handed to every trial through ``tune.with_parameters``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.errors import InputError

# NYU's public release 1.1: raw/in_domain_train.tsv etc.; GLUE: train.tsv + dev.tsv (in+out).
NYU_FILES = ("in_domain_train.tsv", "in_domain_dev.tsv", "out_of_domain_dev.tsv")
GLUE_FILES = ("train.tsv", "dev.tsv")
MIN_PER_CLASS = 1  # rows of each class in the fit and in the selection split, at least


@dataclass
class ColaSplits:
    """Sentences and labels. ``dev`` is GLUE's validation split; ``dev_domain`` says per row
    whether it is in-domain ("in") or out-of-domain ("out"), when that is known."""

    train_text: list[str]
    train_labels: list[int]
    dev_text: list[str]
    dev_labels: list[int]
    dev_domain: list[str] | None
    origin: str


def read_cola_tsv(path: Path) -> tuple[list[str], list[int], list[str]]:
    """Read a 4-column CoLA TSV (source, label, mark, sentence; no header)."""
    texts, labels, sources = [], [], []
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 4:
            raise InputError(f"{path}:{lineno}: expected 4 tab-separated columns "
                             f"(source, label, mark, sentence), found {len(cols)}")
        source, label, _mark, sentence = cols
        if label not in ("0", "1"):
            raise InputError(f"{path}:{lineno}: label {label!r} is not allowed: expected 0 or 1")
        if not sentence.strip():
            raise InputError(f"{path}:{lineno}: empty sentence")
        texts.append(sentence.strip())
        labels.append(int(label))
        sources.append(source)
    if not texts:
        raise InputError(f"{path}: no rows")
    return texts, labels, sources


def load_cola_dir(data_dir: str | Path) -> ColaSplits:
    """Read CoLA from a directory in NYU's layout (``raw/`` or flat) or GLUE's."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"--data-dir {str(data_dir)!r}: no such directory")
    for base in (root / "raw", root):
        if all((base / f).is_file() for f in NYU_FILES):
            tr, trl, _ = read_cola_tsv(base / NYU_FILES[0])
            di, dil, _ = read_cola_tsv(base / NYU_FILES[1])
            do, dol, _ = read_cola_tsv(base / NYU_FILES[2])
            return ColaSplits(tr, trl, di + do, dil + dol, ["in"] * len(di) + ["out"] * len(do),
                              origin=f"NYU CoLA 1.1 at {root}")
    if all((root / f).is_file() for f in GLUE_FILES):
        tr, trl, tr_src = read_cola_tsv(root / "train.tsv")
        dv, dvl, dv_src = read_cola_tsv(root / "dev.tsv")
        # GLUE merges the two dev files; the out-of-domain rows are the ones whose source
        # (first column) never occurs in the training set.
        seen = set(tr_src)
        return ColaSplits(tr, trl, dv, dvl, ["in" if s in seen else "out" for s in dv_src],
                          origin=f"GLUE CoLA at {root}")
    expected = " or ".join([", ".join(f"raw/{f}" for f in NYU_FILES), ", ".join(GLUE_FILES)])
    raise InputError(f"--data-dir {str(data_dir)!r}: CoLA files not found; expected {expected}")


def load_cola_hub() -> ColaSplits:
    """GLUE CoLA from the dataset hub. Offline, a clear error that names ``--data-dir``."""
    from models.hf import load_hub_dataset

    ds = load_hub_dataset("nyu-mll/glue", "cola", what="CoLA", offline_hint=(
        "pass --data-dir DIR with CoLA's raw/in_domain_train.tsv, raw/in_domain_dev.tsv, "
        "raw/out_of_domain_dev.tsv (or GLUE's train.tsv, dev.tsv)"))
    tr, dv = ds["train"], ds["validation"]
    return ColaSplits(list(tr["sentence"]), list(tr["label"]), list(dv["sentence"]),
                      list(dv["label"]), None, origin="hub nyu-mll/glue cola")


# --- a generated acceptability set, so the smoke test needs no data at all -----------------
_DET = ["the", "a", "every", "some", "this", "that"]
_ADJ = ["small", "old", "happy", "green", "quiet", "clever", "brave", "tall"]
_NOUN = ["dog", "teacher", "child", "farmer", "bird", "student", "doctor", "cat", "poet", "king"]
_VERB = ["sees", "likes", "helps", "follows", "finds", "watches", "calls", "meets"]
_ADV = ["quickly", "often", "rarely", "gladly", "slowly"]
_OUT_NOUN = ["engineer", "pilot", "robot", "sailor", "painter"]  # "out-of-domain" nouns


def _sentence(rng: random.Random, nouns: list[str]) -> list[str]:
    np1 = [rng.choice(_DET)] + ([rng.choice(_ADJ)] if rng.random() < 0.5 else []) + [rng.choice(nouns)]
    np2 = [rng.choice(_DET)] + ([rng.choice(_ADJ)] if rng.random() < 0.5 else []) + [rng.choice(nouns)]
    adv = [rng.choice(_ADV)] if rng.random() < 0.3 else []
    return np1 + [rng.choice(_VERB)] + np2 + adv


def _corrupt(rng: random.Random, words: list[str]) -> list[str]:
    # Word-order corruptions: swap two adjacent words, or move the verb to the front.
    w = list(words)
    if rng.random() < 0.5:
        i = rng.randrange(len(w) - 1)
        w[i], w[i + 1] = w[i + 1], w[i]
    else:
        verb = next(x for x in w if x in _VERB)
        w.remove(verb)
        w.insert(0, verb)
    return w if w != words else _corrupt(rng, words)


def synthetic_cola(n_train: int = 600, n_dev: int = 200, seed: int = 0) -> ColaSplits:
    """Sentences from a tiny grammar (label 1) and their word-order corruptions (label 0),
    about 70 % acceptable like CoLA. Dev has an "out-of-domain" half with unseen nouns."""
    rng = random.Random(seed)

    def make(n, nouns):
        texts, labels = [], []
        for _ in range(n):
            words = _sentence(rng, nouns)
            ok = rng.random() < 0.7
            texts.append(" ".join(words if ok else _corrupt(rng, words)).capitalize() + ".")
            labels.append(int(ok))
        return texts, labels

    tr, trl = make(n_train, _NOUN)
    di, dil = make(n_dev // 2, _NOUN)
    do, dol = make(n_dev - n_dev // 2, _OUT_NOUN)
    return ColaSplits(tr, trl, di + do, dil + dol, ["in"] * len(di) + ["out"] * len(do),
                      origin="generated acceptability set (no --data-dir)")


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
class ColaData:
    """Token ids of every sentence, computed once per sweep (unpadded; batches pad dynamically).

    ``train_ids[i]`` is an int32 array of sentence i's tokens; ``fit_idx``/``select_idx`` index
    into the training set."""

    train_ids: list[np.ndarray]
    train_labels: np.ndarray
    fit_idx: np.ndarray
    select_idx: np.ndarray
    dev_ids: list[np.ndarray]
    dev_labels: np.ndarray
    dev_domain: np.ndarray | None
    pad_token_id: int
    origin: str
    meta: dict = field(default_factory=dict)

    def indices(self, name: str) -> np.ndarray:
        """Row numbers of a named split within its source (training set or dev):
        fit, select, train (all), dev, dev_in, dev_out."""
        if name == "train":
            return np.arange(len(self.train_ids))
        if name in ("fit", "select"):
            return self.fit_idx if name == "fit" else self.select_idx
        if name == "dev":
            return np.arange(len(self.dev_ids))
        if name in ("dev_in", "dev_out"):
            if self.dev_domain is None:
                raise KeyError(name)
            return np.flatnonzero(self.dev_domain == name[4:])
        raise KeyError(name)

    def split(self, name: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(ids, labels) of a named split (see ``indices``)."""
        idx = self.indices(name)
        ids, labels = (self.dev_ids, self.dev_labels) if name.startswith("dev") else \
            (self.train_ids, self.train_labels)
        return [ids[i] for i in idx], labels[idx]

    def majority_baseline(self) -> dict:
        """Accuracy of always predicting the most frequent label (MCC is 0 by definition), on
        the selection split (``val_``) and dev (``dev_``)."""
        out = {"val_mcc": 0.0, "dev_mcc": 0.0}
        for prefix, split in (("val", "select"), ("dev", "dev")):
            _, labels = self.split(split)
            out[f"{prefix}_accuracy"] = float(max(np.mean(labels), 1 - np.mean(labels)))
        return out


def tokenize_cola(splits: ColaSplits, tokenizer, *, selection_fraction: float, seed: int,
                  max_length: int = 128, max_train_samples: int | None = None) -> ColaData:
    """Tokenize every sentence once and draw the selection split."""
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

    return ColaData(
        train_ids=ids(train_text), train_labels=np.asarray(train_labels, dtype=np.int64),
        fit_idx=fit, select_idx=sel,
        dev_ids=ids(splits.dev_text), dev_labels=np.asarray(splits.dev_labels, dtype=np.int64),
        dev_domain=None if splits.dev_domain is None else np.asarray(splits.dev_domain),
        pad_token_id=int(tokenizer.pad_token_id), origin=splits.origin,
        meta={"train_rows": len(train_text), "fit_rows": len(fit), "select_rows": len(sel),
              "dev_rows": len(splits.dev_text)},
    )
