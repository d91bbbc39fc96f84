"""bench/gpu_throughput.py and bench/gpu_cola_lora.py: their runners drive the shared loop
(checked here on the CPU, with the tiny model), and without a GPU they exit 2 with the reason
before any work."""
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


def test_gpu_cola_lora_retrains_and_reports_dev_per_group(synthetic, tiny_model):
    """bench/gpu_cola_lora.py's retrain (on the CPU here): every epoch reported, dev and its
    two domain groups scored, each seed its own run."""
    import gpu_cola_lora

    from models.data.classification import tokenize_splits
    from models.hf import load_tokenizer

    data = tokenize_splits(synthetic, load_tokenizer(tiny_model), selection_fraction=0.1,
                           seed=0, max_train_samples=200)
    hp = {**gpu_cola_lora.REFERENCE_BEST, "learning_rate": 5e-3, "batch_size": 32}
    runs = [gpu_cola_lora.train_seed(tiny_model, data, hp, seed=s, epochs=2,
                                     device=torch.device("cpu")) for s in (0, 1)]
    for rows in runs:
        assert [r["epoch"] for r in rows] == [1, 2]
        assert all(0 <= r[f"{k}_accuracy"] <= 1 for r in rows for k in ("dev", "dev_in", "dev_out"))
    assert runs[0][-1]["train_loss"] != runs[1][-1]["train_loss"]  # seeds differ


def test_gpu_cola_lora_without_a_gpu_exits_2(monkeypatch, capsys):
    import gpu_cola_lora

    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU refusal")
    monkeypatch.setattr(sys, "argv", ["gpu_cola_lora.py", "--model", "x", "--data-dir", "y"])
    with pytest.raises(SystemExit) as e:
        gpu_cola_lora.main()
    assert e.value.code == 2 and "--device cpu" in capsys.readouterr().err
