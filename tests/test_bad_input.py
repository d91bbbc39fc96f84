"""Every bad input exits 2 before Ray starts, names the flag/field, value and what is allowed,
and writes nothing.

The cases run the command's ``main`` in this process (``run_main``: the heavy imports are paid
once, not once per case); one case (``too-many-gpus``, which must also exit at once) runs the
script as a real process, so that the process exit code 2 is proven end to end."""
import time

import pytest

from conftest import COLA_SCRIPT, run_cli, run_main, read_table

GOOD = ["gj04\t1\t\tThe cat sat on the mat.", "gj04\t0\t*\tSat the on cat mat."] * 20


def data_dir(root, bad_line=None):
    raw = root / "raw"
    raw.mkdir(parents=True)
    rows = list(GOOD)
    (raw / "in_domain_train.tsv").write_text("\n".join(rows) + "\n")
    if bad_line:
        rows[4] = bad_line
    (raw / "in_domain_dev.tsv").write_text("\n".join(rows) + "\n")
    (raw / "out_of_domain_dev.tsv").write_text("\n".join(GOOD[:4]) + "\n")
    return str(root)


# (case id, extra args or a function of tmp_path returning them, substrings of the message)
# The one case run as a real process (see the module docstring).
SUBPROCESS_CASE = "too-many-gpus"
CASES = [
    ("lr-bound-negative", ["--space", "learning_rate=-1e-5:3e-3"], ["learning_rate", "-1e-05", "> 0"]),
    ("lr-bound-zero", ["--space", "learning_rate=0:1e-3"], ["learning_rate", "> 0"]),
    ("rank-zero", ["--space", "lora_r=0,4"], ["lora_r=0", ">= 1"]),
    ("alpha-nonpositive", ["--space", "lora_alpha=0,16"], ["lora_alpha=0", "> 0"]),
    ("dropout-one", ["--space", "lora_dropout=0:1"], ["lora_dropout=1", "[0, 1)"]),
    ("num-samples-zero", ["--num-samples", "0"], ["--num-samples", "0", ">= 1"]),
    ("pack-zero", ["--pack", "0"], ["--pack", "0", ">= 1", "auto"]),
    ("pack-word", ["--pack", "most"], ["--pack", "most", ">= 1", "auto"]),
    ("too-many-gpus", ["--gpus", "64"], ["--gpus 64", "asked for 64 GPUs, found"]),
    ("missing-data-dir", lambda t: ["--data-dir", str(t / "nowhere")], ["--data-dir", "nowhere", "no such directory"]),
    ("data-dir-without-files", lambda t: ["--data-dir", str(t)], ["--data-dir", "CoLA files not found", "in_domain_train.tsv"]),
    ("malformed-tsv", lambda t: ["--data-dir", data_dir(t / "d", "gj04\tmaybe\t\tA cat.")],
     ["in_domain_dev.tsv:5:", "label 'maybe'", "0 or 1"]),
    ("unknown-model-dir", ["--model", "./no/such/model"], ["--model", "no/such/model", "no such model directory"]),
    ("unknown-hub-model", lambda t: ["--data-dir", data_dir(t / "d"), "--model", "gpt2-nonexistent-xyz"],
     ["--model 'gpt2-nonexistent-xyz'", "not a local directory", "--model PATH"]),
    ("unwritable-storage", lambda t: ["--storage-path", str(t / "afile" / "runs")],
     ["--storage-path", "afile", "not writable"]),
    ("unknown-target-modules", ["--target-modules", "q_proj_nope"], ["--target-modules q_proj_nope"]),
    # --space overrides the study's search dimensions only, with values of their kind
    ("space-stage", ["--space", "stage=retrain"], ["'stage' is not a search dimension", "learning_rate"]),
    ("space-model", ["--space", "model=/nope"], ["'model' is not a search dimension"]),
    ("space-seed", ["--space", "seed=0:5"], ["'seed' is not a search dimension"]),
    ("space-num-threads", ["--space", "num_threads=64"], ["'num_threads' is not a search dimension"]),
    ("space-lr-infinite", ["--space", "learning_rate=1e-3:inf"], ["learning_rate 'inf'", "finite"]),
    ("space-lr-text", ["--space", "learning_rate=abc"],
     ["learning_rate takes numbers, not 'abc'", "learning_rate=LOW:HIGH"]),
    ("space-batch-too-large", ["--space", "batch_size=16,100000"],
     ["batch_size = {16, 100000}", "100000 is more than the", "training rows", "allowed: 1 to"]),
    ("selection-fraction-tiny", ["--selection-fraction", "0.001"],
     ["--selection-fraction 0.001", "per class", "selection split"]),
    ("single-class-training-set", lambda t: ["--data-dir", single_class_dir(t / "d")],
     ["training set: 3 rows, per class {1: 3}", "two classes"]),
]


def single_class_dir(root):
    """Three acceptable training sentences and nothing else (a good dev set)."""
    out = data_dir(root)
    (root / "raw" / "in_domain_train.tsv").write_text("\n".join(GOOD[:1] * 3) + "\n")
    return out


def _args(case, tmp_path):
    _, extra, _ = case
    return extra(tmp_path) if callable(extra) else extra


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_before_anything(case, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("a file, not a directory")
    storage = tmp_path / "runs"
    args = ["--smoke-test", "--storage-path", str(storage)]
    extra = _args(case, tmp_path)
    if "--storage-path" in extra:
        args = ["--smoke-test"]
    t0 = time.time()
    if case[0] == SUBPROCESS_CASE:
        r = run_cli(COLA_SCRIPT, args + extra, tmp_path, timeout=120)
    else:
        r = run_main(COLA_SCRIPT, args + extra, tmp_path, monkeypatch, capsys)
    elapsed = time.time() - t0
    msg = r.stderr
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], msg[-2000:])
    for needle in case[2]:
        assert needle in msg, (needle, msg)
    assert not r.ray_started, "Ray was started"
    assert not storage.exists(), "something was written"
    if case[0] == "too-many-gpus":
        assert elapsed < 10, elapsed


def test_existing_experiment_needs_resume(tmp_path, monkeypatch, capsys):
    (tmp_path / "runs" / "cola_lora").mkdir(parents=True)
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", str(tmp_path / "runs")], tmp_path,
                 monkeypatch, capsys)
    # an empty folder (a sweep that stopped before Tune saved anything) says what to delete
    assert r.returncode == 2 and "already exists; it holds no sweep to continue" in r.stderr
    assert f"delete {tmp_path / 'runs' / 'cola_lora'}" in r.stderr
    assert list((tmp_path / "runs" / "cola_lora").iterdir()) == []
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--resume", "--storage-path", str(tmp_path / "runs")],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and "nothing to continue); delete" in r.stderr
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--resume", "--storage-path", str(tmp_path / "x")],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and "--resume: no restorable experiment" in r.stderr


def test_help_lists_every_flag(tmp_path):
    r = run_cli(COLA_SCRIPT, ["--help"], tmp_path)
    assert r.returncode == 0
    for flag in ("--gpus", "--gpus-per-trial", "--cpus-per-trial", "--num-samples", "--max-epochs",
                 "--grace-period", "--reduction-factor", "--name", "--storage-path", "--resume",
                 "--seed", "--max-train-samples", "--retrain-top-k", "--retrain-seeds",
                 "--smoke-test", "--model", "--target-modules", "--data-dir", "--address",
                 "--storage-is-shared", "--max-failures", "--optuna-storage", "--pack"):
        assert flag in r.stdout, flag


@pytest.mark.slow
def test_space_of_fixed_values_runs_that_configuration(tmp_path, monkeypatch, capsys):
    """Every dimension fixed: no crash in the searcher; one trial evaluates that configuration."""

    fixed = ["learning_rate=0.002", "lora_r=4", "lora_alpha=8", "lora_dropout=0.0",
             "batch_size=16", "weight_decay=0.0"]
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--num-samples", "3", "--max-epochs", "1",
                               "--retrain-top-k", "0", "--storage-path", str(tmp_path / "runs"),
                               *[a for f in fixed for a in ("--space", f)]],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "one trial evaluates that configuration" in r.stdout
    trials = read_table(next((tmp_path / "runs").glob("*/trials.csv")))
    assert len(trials) == 1
    assert trials.filter(like="learning_rate").iloc[0, 0] == 0.002


def test_teacher_without_model_type_or_with_three_labels_exits_2(tmp_path, monkeypatch, capsys,
                                                                 tiny_model):
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from conftest import REPO

    no_type = tmp_path / "no_type"
    no_type.mkdir()
    (no_type / "config.json").write_text(json.dumps({"hidden_size": 8}))
    three = tmp_path / "three"
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3,
                                                              pad_token_id=0)
    torch.manual_seed(0)
    peft = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["c_attn"]))
    peft.save_pretrained(three)
    script = REPO / "search" / "cola_kd.py"
    for teacher, needle in ((no_type, "not a model transformers can load"),
                            (three, "do not fit a 2-label classifier")):
        r = run_main(script, ["--smoke-test", "--teacher", str(teacher), "--storage-path",
                              str(tmp_path / "runs")], tmp_path, monkeypatch, capsys)
        assert r.returncode == 2 and not r.ray_started, r.stderr[-2000:]
        assert f"--teacher {str(teacher)!r}" in r.stderr and needle in r.stderr, r.stderr
        assert not (tmp_path / "runs").exists()


def test_empty_cnndm_csv_exits_2(tmp_path, monkeypatch, capsys):
    from conftest import REPO

    (tmp_path / "empty.csv").write_bytes(b"")
    r = run_main(REPO / "search" / "cnndm_summarize.py",
                 ["--smoke-test", "--data-dir", str(tmp_path / "empty.csv"), "--storage-path",
                  str(tmp_path / "runs")], tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started
    assert "empty.csv: empty file" in r.stderr and "id, article, highlights" in r.stderr


def test_smoke_tests_default_to_their_own_storage(tmp_path, monkeypatch, capsys):
    """The README's sequence (smoke test, then the real sweep) must not collide: a smoke test
    writes under ray_results/smoke/, a real sweep under ray_results/."""
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--resume"], tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and "ray_results/smoke/cola_lora" in r.stderr, r.stderr
    r = run_main(COLA_SCRIPT, ["--resume"], tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and "ray_results/cola_lora" in r.stderr, r.stderr


def test_unknown_adapter_method_exits_2(tmp_path, monkeypatch, capsys):
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--method", "adapters", "--storage-path",
                               str(tmp_path / "runs")], tmp_path, monkeypatch, capsys)
    assert r.returncode == 2
    assert "--method" in r.stderr and "'adapters'" in r.stderr and "ia3" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_blank_separator_exits_2(tmp_path, monkeypatch, capsys):
    from conftest import REPO

    r = run_main(REPO / "search" / "cnndm_summarize.py",
                 ["--smoke-test", "--separator", "   ", "--storage-path",
                  str(tmp_path / "runs")], tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started
    assert "--separator '   '" in r.stderr and "more than spaces" in r.stderr
    assert not (tmp_path / "runs").exists()
