"""bench/gpu_throughput.py: its epoch runner drives the shared loop (checked here on the CPU,
with the tiny model), and without a GPU it exits 2 with the reason before any work."""
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_throughput  # noqa: E402


def test_epoch_runner_reports_each_epoch(synthetic, tiny_model):
    from models.data.classification import tokenize_splits
    from models.hf import load_tokenizer

    data = tokenize_splits(synthetic, load_tokenizer(tiny_model), selection_fraction=0.1, seed=0,
                         max_train_samples=200)
    reps = gpu_throughput.run_epochs(tiny_model, data, batch_size=32, lora_r=4, compile=False,
                                     epochs=2, device="cpu")
    assert [r["epoch"] for r in reps] == [1, 2]
    assert all(r["train_s"] > 0 and r["peak_mem_mb"] > 0 for r in reps)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_without_a_gpu_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_throughput.py"])
    with pytest.raises(SystemExit) as e:
        gpu_throughput.main()
    assert e.value.code == 2
    assert "no CUDA GPU" in capsys.readouterr().err
