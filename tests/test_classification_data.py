"""The generic classification container: any number of labels, dev groups as named splits,
the selection split kept apart from dev, and the stage's splits and score for a study."""
import numpy as np

from models.classify import stage_splits
from models.data.classification import TextSplits, tokenize_splits


class WordTokenizer:
    """One id per word: enough for the container, no model needed."""
    pad_token_id = 0

    def __call__(self, texts, truncation=True, max_length=128):
        return {"input_ids": [[1 + len(w) for w in t.split()][:max_length] for t in texts]}


def splits(groups):
    train = [f"sentence {'x' * (i % 5)} number {i}" for i in range(60)]
    labels = [i % 3 for i in range(60)]  # three classes, 20 rows each
    dev = [f"dev {'y' * (i % 4)}" for i in range(12)]
    return TextSplits(train, labels, dev, [0] * 7 + [1] * 3 + [2] * 2, groups, origin="test")


def test_three_labels_with_dev_groups():
    groups = ["news"] * 5 + ["fiction"] * 4 + ["law"] * 3
    data = tokenize_splits(splits(groups), WordTokenizer(), selection_fraction=0.25, seed=0)
    assert data.groups() == ["news", "fiction", "law"]
    assert data.dev_splits() == ["dev", "dev_news", "dev_fiction", "dev_law"]
    assert list(data.indices("dev_fiction")) == [5, 6, 7, 8]
    ids, labels = data.split("dev_law")
    assert len(ids) == 3 and list(labels) == [1, 2, 2]
    # the selection slice is stratified over all three classes and disjoint from fit
    _, sel = data.split("select")
    assert sorted(np.bincount(sel)) == [5, 5, 5]
    assert not set(data.fit_idx) & set(data.select_idx)
    # the stage's splits: sweeps score on the selection slice, retrains on dev and each group
    assert stage_splits(data, "sweep", score="accuracy") == ("fit", {"val": "select"},
                                                             "val_accuracy")
    train, evals, metric = stage_splits(data, "retrain", score="mcc")
    assert train == "train" and metric == "dev_mcc"
    assert list(evals) == ["dev", "dev_news", "dev_fiction", "dev_law"]


def test_no_groups_and_majority_from_training_labels():
    s = splits(None)
    s.train_labels = [2] * 30 + [0] * 15 + [1] * 15  # class 2 is the training majority
    data = tokenize_splits(s, WordTokenizer(), selection_fraction=0.2, seed=1)
    assert data.groups() == [] and data.dev_splits() == ["dev"]
    try:
        data.indices("dev_in")
    except KeyError:
        pass
    else:
        raise AssertionError("dev_in exists only when the task has dev groups")
    base = data.majority_baseline()
    # dev's own majority is class 0 (7 of 12), but the baseline predicts training's: class 2
    assert base["dev_accuracy"] == 2 / 12 and base["dev_mcc"] == 0.0
    assert base["val_accuracy"] == 0.5
