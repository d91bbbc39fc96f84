import math

import numpy as np

from models.data.batching import classification_batches, pad_batch
from models.metrics import classification_metrics


def test_mcc_known_values():
    y = np.array([1, 1, 1, 0, 0, 1, 0, 1])
    assert classification_metrics(y, y)["mcc"] == 1.0
    assert classification_metrics(y, 1 - y)["mcc"] == -1.0
    # constant predictions (the majority-class baseline) have MCC 0
    assert classification_metrics(y, np.ones_like(y)) == {"accuracy": 5 / 8, "mcc": 0.0}
    p = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    tp, tn, fp, fn = 4, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert abs(classification_metrics(y, p)["mcc"] - expected) < 1e-12


def test_dynamic_padding_pads_to_longest_in_batch():
    seqs = [np.array([5, 6]), np.array([7, 8, 9, 10]), np.array([1])]
    ids, mask = pad_batch(seqs, pad_id=0)
    assert ids.shape == (3, 4)
    assert mask.sum(1).tolist() == [2, 4, 1]
    assert ids[2].tolist() == [1, 0, 0, 0]


def test_batches_cover_every_example_once_per_epoch():
    seqs = [np.arange(1, n + 2) for n in range(50)]
    labels = np.arange(50) % 2
    seen = []
    for b in classification_batches(seqs, labels, batch_size=8, pad_id=0, shuffle_seed=11):
        seen += [int(r[r > 0].numel()) - 1 for r in b["input_ids"]]
        assert b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max())
    assert sorted(seen) == list(range(50))
