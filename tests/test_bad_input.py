"""Every bad input exits 2 before Ray starts, names the flag/field, value and what is allowed,
and writes nothing.

The cases run the command's ``main`` in this process (``run_main``: the heavy imports are paid
once, not once per case); one case (``too-many-gpus``, which must also exit at once) runs the
script as a real process, so that the process exit code 2 is proven end to end."""
import time

import pytest

from conftest import COLA_SCRIPT, run_cli, run_main

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
]


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
    assert r.returncode == 2 and "already exists; pass --resume" in r.stderr
    assert list((tmp_path / "runs" / "cola_lora").iterdir()) == []
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
                 "--storage-is-shared", "--max-failures", "--optuna-storage"):
        assert flag in r.stdout, flag
