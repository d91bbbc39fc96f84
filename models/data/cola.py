"""CoLA loading: NYU's raw layout, GLUE's layout, the hub, and a generated stand-in set.

Owns reading and checking CoLA's files (a bad row is an ``InputError`` naming file and line)
into the generic ``TextSplits``, with CoLA's in-domain / out-of-domain dev rows as its dev
groups ("in", "out": the named splits ``dev_in`` and ``dev_out``). Selection split and
tokenizing are every classification task's (``models.data.classification``)."""
from __future__ import annotations

import random
from pathlib import Path

from models.data.classification import TextSplits
from models.errors import InputError

# NYU's public release 1.1: raw/in_domain_train.tsv etc.; GLUE: train.tsv + dev.tsv (in+out).
NYU_FILES = ("in_domain_train.tsv", "in_domain_dev.tsv", "out_of_domain_dev.tsv")
GLUE_FILES = ("train.tsv", "dev.tsv")
# GLUE's measure for CoLA (unbalanced classes: accuracy rewards the majority class); the
# CoLA studies select and report on it, beside accuracy.
SCORE = "mcc"


def read_cola_tsv(path: Path) -> tuple[list[str], list[int], list[str]]:
    """Read a 4-column CoLA TSV (source, label, mark, sentence; no header)."""
    texts, labels, sources = [], [], []
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    # Rows end at "\n" (or "\r\n") only: str.splitlines() would also end one at U+2028,
    # U+0085 and other characters that are legal text inside a sentence.
    for lineno, line in enumerate(raw.split("\n"), start=1):
        line = line.removesuffix("\r")
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


def load_cola_dir(data_dir: str | Path) -> TextSplits:
    """Read CoLA from a directory in NYU's layout (``raw/`` or flat) or GLUE's."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"--data-dir {str(data_dir)!r}: no such directory")
    for base in (root / "raw", root):
        if all((base / f).is_file() for f in NYU_FILES):
            tr, trl, _ = read_cola_tsv(base / NYU_FILES[0])
            di, dil, _ = read_cola_tsv(base / NYU_FILES[1])
            do, dol, _ = read_cola_tsv(base / NYU_FILES[2])
            return TextSplits(tr, trl, di + do, dil + dol, ["in"] * len(di) + ["out"] * len(do),
                              origin=f"NYU CoLA 1.1 at {root}")
    if all((root / f).is_file() for f in GLUE_FILES):
        tr, trl, tr_src = read_cola_tsv(root / "train.tsv")
        dv, dvl, dv_src = read_cola_tsv(root / "dev.tsv")
        # GLUE merges the two dev files; the out-of-domain rows are the ones whose source
        # (first column) never occurs in the training set.
        seen = set(tr_src)
        return TextSplits(tr, trl, dv, dvl, ["in" if s in seen else "out" for s in dv_src],
                          origin=f"GLUE CoLA at {root}")
    expected = " or ".join([", ".join(f"raw/{f}" for f in NYU_FILES), ", ".join(GLUE_FILES)])
    raise InputError(f"--data-dir {str(data_dir)!r}: CoLA files not found; expected {expected}")


def load_cola_hub() -> TextSplits:
    """GLUE CoLA from the dataset hub. Offline, a clear error that names ``--data-dir``."""
    from models.hf import load_hub_dataset

    ds = load_hub_dataset("nyu-mll/glue", "cola", what="CoLA", offline_hint=(
        "pass --data-dir DIR with CoLA's raw/in_domain_train.tsv, raw/in_domain_dev.tsv, "
        "raw/out_of_domain_dev.tsv (or GLUE's train.tsv, dev.tsv)"))
    tr, dv = ds["train"], ds["validation"]
    return TextSplits(list(tr["sentence"]), list(tr["label"]), list(dv["sentence"]),
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


def synthetic_cola(n_train: int = 600, n_dev: int = 200, seed: int = 0) -> TextSplits:
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
    return TextSplits(tr, trl, di + do, dil + dol, ["in"] * len(di) + ["out"] * len(do),
                      origin="generated acceptability set (no --data-dir)")
