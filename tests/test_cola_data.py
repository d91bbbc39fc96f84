import numpy as np
import pytest

from models.data.classification import selection_split, tokenize_splits
from models.data.cola import load_cola_dir
from models.errors import InputError

ROWS = ["gj04\t1\t\tThe cat sat.", "gj04\t0\t*\tSat cat the.", "kl93\t1\t\tDogs bark loudly."]
OUT_ROWS = ["clc95\t1\t\tA bird sings.", "clc95\t0\t*\tSings bird a."]


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def nyu(root):
    write(root / "raw" / "in_domain_train.tsv", ROWS * 4)
    write(root / "raw" / "in_domain_dev.tsv", ROWS)
    write(root / "raw" / "out_of_domain_dev.tsv", OUT_ROWS)
    return root


def test_nyu_layout(tmp_path):
    s = load_cola_dir(nyu(tmp_path))
    assert len(s.train_text) == 12 and s.train_labels[:3] == [1, 0, 1]
    assert s.dev_text == [r.split("\t")[3] for r in ROWS + OUT_ROWS]
    assert s.dev_groups == ["in"] * 3 + ["out"] * 2


def test_glue_layout_recovers_domains_from_sources(tmp_path):
    write(tmp_path / "train.tsv", ROWS * 4)
    write(tmp_path / "dev.tsv", ROWS + OUT_ROWS)
    s = load_cola_dir(tmp_path)
    assert len(s.dev_text) == 5
    # out-of-domain rows are those whose source never occurs in training
    assert s.dev_groups == ["in", "in", "in", "out", "out"]


@pytest.mark.parametrize("bad, expect", [
    ("gj04\t1\tThe cat sat.", "expected 4 tab-separated columns"),
    ("gj04\t2\t\tThe cat sat.", "label '2' is not allowed"),
    ("gj04\t1\t\t   ", "empty sentence"),
])
def test_malformed_row_names_file_and_line(tmp_path, bad, expect):
    nyu(tmp_path)
    write(tmp_path / "raw" / "in_domain_dev.tsv", ROWS[:2] + [bad])
    with pytest.raises(InputError) as e:
        load_cola_dir(tmp_path)
    msg = str(e.value)
    assert "in_domain_dev.tsv:3:" in msg and expect in msg


def test_missing_dir_and_files(tmp_path):
    with pytest.raises(InputError, match="--data-dir .*no such directory"):
        load_cola_dir(tmp_path / "nope")
    with pytest.raises(InputError, match="CoLA files not found"):
        load_cola_dir(tmp_path)


def test_real_cola_counts(shared_cola):
    s = load_cola_dir(shared_cola)
    assert len(s.train_text) == 8551 and len(s.dev_text) == 1043
    assert s.dev_groups.count("in") == 527 and s.dev_groups.count("out") == 516
    assert abs(np.mean(s.dev_labels) - 0.689) < 0.001  # the majority-class baseline


def test_selection_split_is_seeded_stratified_and_disjoint():
    labels = [1] * 700 + [0] * 300
    fit, sel = selection_split(labels, 0.1, seed=3)
    assert len(sel) == 100 and len(fit) == 900 and not set(fit) & set(sel)
    assert sum(labels[i] for i in sel) == 70  # same class balance as the whole
    fit2, sel2 = selection_split(labels, 0.1, seed=3)
    assert (sel == sel2).all()
    assert not (selection_split(labels, 0.1, seed=4)[1] == sel).all()


def test_tokenize_once_unpadded(synthetic, tiny_model):
    from models.hf import load_tokenizer

    tok = load_tokenizer(tiny_model)
    data = tokenize_splits(synthetic, tok, selection_fraction=0.1, seed=0)
    assert len(data.train_ids) == len(synthetic.train_text)
    lengths = {len(x) for x in data.train_ids}
    assert len(lengths) > 1  # no fixed-length padding at tokenization time
    ids, labels = data.split("select")
    assert len(ids) == len(data.select_idx) == 60
    assert len(data.split("dev_in")[0]) + len(data.split("dev_out")[0]) == len(data.dev_ids)
