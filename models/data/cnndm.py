"""CNN/DailyMail loading and causal-LM formatting for the summarization study.

Owns reading the Kaggle CSV export (``train.csv`` / ``validation.csv`` / ``test.csv``, or one
CSV split deterministically), the hub's ``cnn_dailymail`` 3.0.0, a generated stand-in set for
the smoke test, and tokenizing once per sweep into ``SumData``, the object every trial gets
through ``tune.with_parameters``.

Format of one training example (token ids)::

    article[:max_source_tokens] + separator + " " + summary[:max_target_tokens] + EOS

Labels copy the ids on the summary and its EOS and are -100 (ignored) on the article, the
separator and padding, so the loss covers summary tokens only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.errors import InputError

IGNORE = -100  # label of positions that carry no loss (PyTorch's cross-entropy default)
REQUIRED = ("id", "article", "highlights")
SPLIT_FILES = {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"}
# One CSV is split train / validation / test in these shares, by a seeded permutation.
SINGLE_FILE_SHARES = (0.8, 0.1, 0.1)


@dataclass
class Articles:
    """Raw text of the three splits: lists of (article, highlights)."""

    train: list[tuple[str, str]]
    validation: list[tuple[str, str]]
    test: list[tuple[str, str]]
    origin: str
    dropped: int = 0  # rows skipped for an empty article or summary


def read_cnndm_csv(path: Path, *, max_empty_fraction: float) -> tuple[list[tuple[str, str]], int]:
    """Rows (article, highlights) of one Kaggle-layout CSV, and how many empty rows were
    dropped. A missing column, or more empty rows than ``max_empty_fraction``, is an error."""
    import pandas as pd

    try:
        # The export's unnamed first column is the old index; quoted fields span lines and
        # end in CRLF, which the C parser handles.
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError(f"--data-dir: {path} does not exist") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file (expected a CSV with columns "
                         f"{', '.join(REQUIRED)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    _check_header(path, df)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing required column {missing[0]!r} (found columns "
                         f"{[c for c in df.columns if not c.startswith('Unnamed')]}; "
                         f"required: {list(REQUIRED)})")
    article = df["article"].str.strip()
    summary = df["highlights"].str.strip()
    empty = (article == "") | (summary == "")
    n_empty, n = int(empty.sum()), len(df)
    if n == 0:
        raise InputError(f"{path}: no rows")
    if n_empty > max_empty_fraction * n:
        raise InputError(f"{path}: {n_empty} of {n} rows have an empty article or highlights "
                         f"(allowed: at most {max_empty_fraction:.0%} of rows, "
                         "--max-empty-fraction)")
    keep = ~empty
    return list(zip(article[keep], summary[keep])), n_empty


def _check_header(path: Path, df) -> None:
    """Every column named once (names compared without surrounding spaces), and no row with
    more fields than the header: pandas would silently read the first such column, or make
    the extra field an index and shift every column by one (a trailing comma on each row)."""
    import csv

    import pandas as pd

    try:  # the header as written: pandas renames a repeated name ("article.1")
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV ({e})") from None
    names = [c.strip() for c in header]
    twice = sorted({c for c in names if c and names.count(c) > 1})
    if twice:
        raise InputError(f"{path}: column {twice[0]!r} appears {names.count(twice[0])} times in "
                         f"the header {header!r} (names compared without surrounding spaces); "
                         "each column must be named once")
    if not isinstance(df.index, pd.RangeIndex):
        raise InputError(f"{path}: rows have {len(header) + df.index.nlevels} fields but the "
                         f"header names {len(header)} ({', '.join(header)}): a trailing comma "
                         "on every row? Every row must have as many fields as the header")


def load_cnndm_dir(data_dir: str, *, seed: int, max_empty_fraction: float = 0.01) -> Articles:
    """``train.csv`` + ``validation.csv`` + ``test.csv``, or a single CSV (a file, or the one
    CSV in the directory) split 80/10/10 by a seeded permutation."""
    p = Path(data_dir).expanduser()
    if not p.exists():
        raise InputError(f"--data-dir {data_dir!r}: no such file or directory")
    if p.is_dir() and all((p / f).is_file() for f in SPLIT_FILES.values()):
        parts, dropped = {}, 0
        for split, name in SPLIT_FILES.items():
            parts[split], d = read_cnndm_csv(p / name, max_empty_fraction=max_empty_fraction)
            dropped += d
        return Articles(**parts, origin=f"{p} (train/validation/test CSV)", dropped=dropped)
    if p.is_dir():
        csvs = sorted(p.glob("*.csv"))
        if len(csvs) != 1:
            raise InputError(f"--data-dir {data_dir!r}: expected {', '.join(SPLIT_FILES.values())}, "
                             f"or exactly one CSV to split; found {[c.name for c in csvs] or 'none'}")
        p = csvs[0]
    rows, dropped = read_cnndm_csv(p, max_empty_fraction=max_empty_fraction)
    if len(rows) < 3:
        raise InputError(f"{p}: {len(rows)} usable rows; at least 3 are needed to split "
                         "into train / validation / test")
    order = np.random.default_rng(seed).permutation(len(rows))
    n_val = max(1, round(SINGLE_FILE_SHARES[1] * len(rows)))
    n_test = max(1, round(SINGLE_FILE_SHARES[2] * len(rows)))
    n_train = len(rows) - n_val - n_test
    pick = lambda idx: [rows[i] for i in sorted(idx)]  # noqa: E731
    return Articles(pick(order[:n_train]), pick(order[n_train:n_train + n_val]),
                    pick(order[n_train + n_val:]),
                    origin=f"{p} (one CSV split {n_train}/{n_val}/{n_test}, seed {seed})",
                    dropped=dropped)


def load_cnndm_hub() -> Articles:
    """CNN/DailyMail 3.0.0 from the dataset hub. Offline, a clear error naming --data-dir."""
    from models.hf import load_hub_dataset

    ds = load_hub_dataset("abisee/cnn_dailymail", "3.0.0", what="CNN/DailyMail", offline_hint=(
        "pass --data-dir DIR with the Kaggle CSV export (train.csv, validation.csv, test.csv "
        "with columns id, article, highlights), or a single such CSV"))
    parts = {s: list(zip(ds[s]["article"], ds[s]["highlights"])) for s in SPLIT_FILES}
    return Articles(**parts, origin="hub abisee/cnn_dailymail 3.0.0")


# --- a generated stand-in set, so the smoke test needs no data at all ----------------------
_WHO = ["The mayor", "A local teacher", "The team captain", "Police", "The company", "Scientists"]
_DID = ["announced", "rejected", "celebrated", "investigated", "reported", "unveiled"]
_WHAT = ["a new bridge", "the budget plan", "a record harvest", "the river flood",
         "a rare comet", "the museum reopening"]
_WHERE = ["in Leeds", "in Ohio", "near the coast", "downtown", "in the valley", "at the port"]
_FILL = ["Officials said more details would follow.", "Residents gathered to watch.",
         "The decision drew mixed reactions.", "It was the first such event in years.",
         "Reporters were told to expect an update.", "Critics questioned the timing."]


def synthetic_articles(n: int = 160, seed: int = 0) -> Articles:
    """Short template articles whose summary is their first sentence (a lead-1 task a tiny
    model can start to learn)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        lead = f"{rng.choice(_WHO)} {rng.choice(_DID)} {rng.choice(_WHAT)} {rng.choice(_WHERE)}."
        body = " ".join(rng.sample(_FILL, 3))
        rows.append((f"{lead} {body}", lead))
    n_val = n_test = n // 8
    return Articles(rows[: n - n_val - n_test], rows[n - n_val - n_test: n - n_test],
                    rows[n - n_test:], origin="generated template articles (no --data-dir)")


# --- tokenized, once per sweep ---------------------------------------------------------------
@dataclass
class Example:
    input_ids: np.ndarray  # [L] article + separator + summary + EOS
    prompt_len: int  # tokens of article + separator: the generation prompt, no loss


@dataclass
class SumData:
    """Token ids of every split, the reference summaries for ROUGE and the tokenizer (for
    decoding generations); handed to every trial through ``tune.with_parameters``."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    references: list[str]  # highlights of the first ``len(references)`` test examples
    tokenizer: object
    pad_token_id: int
    eos_token_id: int
    max_target_tokens: int
    origin: str
    meta: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


# The default text between article and summary (the summary follows after a space).
SEPARATOR = " TL;DR:"


def separator_ids(tokenizer, separator: str) -> list[int]:
    """The separator's tokens, trailing spaces dropped: the summary brings its own leading
    space (" " + summary), as BPE vocabularies (GPT-2's, Llama's) put a word's space in the
    word's token. A prompt that ends in a bare space token is one such a model rarely saw
    before a word: the untuned SmolLM2 then began its summaries with digits and dates."""
    return tokenizer(separator.rstrip(" "), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, article: str, summary: str, *, sep: list[int],
                   max_source_tokens: int, max_target_tokens: int) -> Example:
    """``sep``: the separator's ``separator_ids``, tokenized once for all articles."""
    src = tokenizer(article, add_special_tokens=False)["input_ids"][:max_source_tokens]
    tgt = tokenizer(" " + summary.strip(), add_special_tokens=False)["input_ids"][:max_target_tokens]
    ids = np.asarray(src + sep + tgt + [tokenizer.eos_token_id], dtype=np.int64)
    return Example(ids, len(src) + len(sep))


def tokenize_articles(articles: Articles, tokenizer, *, separator: str, max_source_tokens: int,
                      max_target_tokens: int, max_train_samples: int | None = None,
                      max_eval_samples: int | None = None, rouge_samples: int = 0,
                      seed: int = 0) -> SumData:
    """Tokenize all splits. ``max_*_samples`` keep a seeded random subset (in file order);
    the ROUGE references are the first ``rouge_samples`` test rows kept."""

    def subset(rows, k):
        if k is None or k >= len(rows):
            return rows
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=k, replace=False))
        return [rows[i] for i in keep]

    sep = separator_ids(tokenizer, separator)
    enc = lambda rows: [encode_example(  # noqa: E731
        tokenizer, a, s, sep=sep, max_source_tokens=max_source_tokens,
        max_target_tokens=max_target_tokens) for a, s in rows]
    train = subset(articles.train, max_train_samples)
    val = subset(articles.validation, max_eval_samples)
    test = subset(articles.test, max_eval_samples)
    if not train or not val or not test:
        raise InputError(f"{articles.origin}: every split needs at least one article "
                         f"(train {len(train)}, validation {len(val)}, test {len(test)})")
    data = SumData(enc(train), enc(val), enc(test),
                   references=[s for _, s in test[:rouge_samples]], tokenizer=tokenizer,
                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                   max_target_tokens=max_target_tokens, origin=articles.origin)
    data.meta = {"train_rows": len(train), "validation_rows": len(val), "test_rows": len(test),
                 "dropped_empty_rows": articles.dropped,
                 "mean_tokens": float(np.mean([len(e.input_ids) for e in data.train]))}
    return data


def lm_batches(examples: list[Example], *, batch_size: int, pad_id: int,
               shuffle_seed: int | None = None, group_by_length: bool = False,
               order: np.ndarray | None = None):
    """Yield {input_ids, attention_mask, labels} [B, L_max], right-padded to the longest in
    the batch; labels are IGNORE on prompt and padding positions. Order: as given, or
    ``order``, or a seeded shuffle (length-grouped with ``group_by_length``)."""
    import torch

    from models.data.batching import epoch_order

    if order is None:
        order = epoch_order(np.fromiter((len(e.input_ids) for e in examples), int, len(examples)),
                            batch_size=batch_size, seed=shuffle_seed,
                            group_by_length=group_by_length)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start: start + batch_size]]
        width = max(len(e.input_ids) for e in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        labels = np.full((len(chunk), width), IGNORE, dtype=np.int64)
        for row, e in enumerate(chunk):
            n = len(e.input_ids)
            ids[row, :n] = e.input_ids
            mask[row, :n] = 1
            labels[row, e.prompt_len:n] = e.input_ids[e.prompt_len:]
        yield {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
               "labels": torch.from_numpy(labels)}


def prompt_batches(examples: list[Example], *, batch_size: int, pad_id: int):
    """Yield {input_ids, attention_mask} of the prompts only (article + separator), LEFT-padded
    so that every row's generation starts right after its last real token."""
    import torch

    for start in range(0, len(examples), batch_size):
        chunk = [e.input_ids[: e.prompt_len] for e in examples[start: start + batch_size]]
        width = max(len(c) for c in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, c in enumerate(chunk):
            ids[row, width - len(c):] = c
            mask[row, width - len(c):] = 1
        yield {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
