"""The distillation study end to end (real Ray, Optuna, ASHA), and its bad inputs (run in this
process by ``run_main``, except ``no-teacher``, run as a real process: exit code 2 end to end)."""
import math

import pandas as pd
import pytest

from conftest import REPO, run_cli, run_main, read_table

KD_SCRIPT = REPO / "search" / "cola_kd.py"


@pytest.mark.slow
def test_kd_smoke_with_baseline_runs_teacher_once(tmp_path, monkeypatch, capsys):
    import importlib.util

    from conftest import ray_tmpdir
    from models import teacher

    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmpdir(tmp_path)))
    spec = importlib.util.spec_from_file_location("cola_kd_cli", KD_SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    # Count the teacher's passes and batches where they happen (its batch iterator).
    passes = {"count": 0, "forwards": 0}
    real_logits, real_batches = teacher.teacher_logits, teacher.classification_batches

    def counting_logits(*a, **k):
        passes["count"] += 1
        return real_logits(*a, **k)

    def counting_batches(*a, **k):
        for b in real_batches(*a, **k):
            passes["forwards"] += 1
            yield b

    monkeypatch.setattr(teacher, "teacher_logits", counting_logits)
    monkeypatch.setattr(teacher, "classification_batches", counting_batches)
    storage = tmp_path / "runs"
    code = cli.main(["--smoke-test", "--with-baseline", "--storage-path", str(storage)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    # One pass of the teacher over train + dev for the whole command (both sweeps, all
    # trials, all retrains): 600 + 200 generated sentences in batches of 64.
    assert passes == {"count": 1, "forwards": math.ceil(800 / 64)}
    for name in ("cola_kd", "cola_kd-scratch"):
        trials = read_table(storage / name / "trials.csv")
        assert len(trials) >= 4
        assert {"kd_fraction", "kd_temperature", "hidden_size",
                "last_val_agreement", "best_val_mcc"} <= set(trials.columns)
    scratch = read_table(storage / "cola_kd-scratch" / "trials.csv")
    assert (scratch["kd_fraction"] == 1.0).all()
    table = read_table(storage / "cola_kd" / "comparison.csv")
    assert table["model"].tolist()[1:] == ["KD student", "scratch student"]
    assert table["model"].iloc[0].startswith("teacher")
    # numbers only: mean and sd apart (sd empty for the teacher's single run)
    for col in ("n_seeds", "dev_accuracy_mean", "dev_mcc_mean", "params", "size_mb",
                "cpu_sentences_per_s", "agreement"):
        assert table[col].notna().all(), col
        assert pd.api.types.is_numeric_dtype(table[col]), col
    assert table["dev_mcc_sd"].iloc[1:].notna().all()
    assert (table["cpu_sentences_per_s"] > 0).all()
    assert "KD gain in dev MCC" in out and "pooled seed sd" in out
    assert any(w in out for w in ("is better", "is worse", "within noise", "one seed each"))


@pytest.fixture(scope="module")
def three_label_teacher(tmp_path_factory, tiny_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    d = tmp_path_factory.mktemp("t3") / "teacher"
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    from models.tiny import build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("other") / "m",
                           ["completely different words here"] * 20, vocab_size=300)


@pytest.mark.parametrize("case", ["missing-teacher", "three-labels", "fraction", "temperature",
                                  "hidden-size", "tokenizer-mismatch", "no-teacher"])
def test_kd_bad_input(case, tmp_path, three_label_teacher, other_tokenizer, tiny_model,
                      monkeypatch, capsys):
    storage = tmp_path / "runs"
    args, needles = {
        "missing-teacher": (["--teacher", str(tmp_path / "nope")], ["--teacher", "no such directory"]),
        "three-labels": (["--teacher", three_label_teacher], ["3 labels", "needs a 2-label"]),
        "fraction": (["--smoke-test", "--space", "kd_fraction=0:1.5"], ["kd_fraction=1.5", "[0, 1]"]),
        "temperature": (["--smoke-test", "--space", "kd_temperature=0:4"], ["kd_temperature", "> 0"]),
        "hidden-size": (["--smoke-test", "--space", "hidden_size=0,64"], ["hidden_size=0", ">= 1"]),
        "tokenizer-mismatch": (["--teacher", three_label_teacher, "--tokenizer", other_tokenizer],
                               ["--teacher"]),
        "no-teacher": ([], ["--teacher is required"]),
    }[case]
    if case == "tokenizer-mismatch":  # a valid 2-label teacher whose vocabulary differs
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        t2 = tmp_path / "t2"
        AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).save_pretrained(t2)
        AutoTokenizer.from_pretrained(tiny_model).save_pretrained(t2)
        args = ["--teacher", str(t2), "--tokenizer", other_tokenizer]
        needles = ["--tokenizer", "is not the teacher's"]
    if case == "no-teacher":
        r = run_cli(KD_SCRIPT, args + ["--storage-path", str(storage)], tmp_path, timeout=180)
    else:
        r = run_main(KD_SCRIPT, args + ["--storage-path", str(storage)], tmp_path, monkeypatch,
                     capsys)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    assert not r.ray_started and not storage.exists()


def test_kd_verdict_says_better_worse_or_within_noise():
    from results.comparison import kd_verdict

    assert "better" in kd_verdict(0.10, 0.02)
    assert "worse" in kd_verdict(-0.1791, 0.0278)  # the case that read as "no difference"
    assert "within noise" in kd_verdict(0.03, 0.02)
    assert "one seed" in kd_verdict(0.1, float("nan"))
