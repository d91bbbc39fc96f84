"""The summarization study end to end (real Ray, Optuna TPE, ASHA, peft), and its bad inputs
(run in this process by ``run_main``; the offline-hub case runs as a real process: exit code 2
end to end, with the hub libraries imported under HF_HUB_OFFLINE as a user's command has them)."""
import json

import pytest
from PIL import Image

from conftest import REPO, run_cli, run_main, read_table

SCRIPT = REPO / "search" / "cnndm_summarize.py"
SHARED_CNNDM = REPO.parent / "shared" / "data" / "cnn_dailymail"
ROUGE = ["test_rouge1", "test_rouge2", "test_rougeL"]
EPOCH_COLUMNS = {"trial_id", "epoch", "train_loss", "val_loss", "best_val_loss", "train_s",
                 "epoch_s", "peak_mem_mb", "trainable_params", "seed", "git_commit", "versions"}


@pytest.fixture(scope="module")
def cnndm_dir():
    if not (SHARED_CNNDM / "train_sample.csv").is_file():
        pytest.skip("CNN/DailyMail sample not present")
    return SHARED_CNNDM


@pytest.mark.slow
def test_all_methods_smoke_on_the_real_sample(tmp_path, cnndm_dir, monkeypatch, capsys):
    storage = tmp_path / "runs"
    # In this process (run_main); test_smoke_without_data's sweep is the real process.
    r = run_main(SCRIPT, ["--smoke-test", "--method", "all", "--data-dir", str(cnndm_dir),
                          "--storage-path", str(storage)], tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "80 train / 10 validation" in r.stdout  # the 100-article sample, split 80/10/10
    for method, hp in (("prompt", "num_virtual_tokens"), ("lora", "lora_r"),
                       ("last-layers", "n_last_layers")):
        exp = storage / f"cnndm-{method}"
        trials = read_table(exp / "trials.csv")
        assert len(trials) == 4 and hp in trials
        assert trials["best_val_loss"].is_monotonic_increasing  # mode min: best first
        epochs = read_table(exp / "epochs.csv")
        assert EPOCH_COLUMNS <= set(epochs.columns), EPOCH_COLUMNS - set(epochs.columns)
        assert (epochs["peak_mem_mb"] > 0).all() and (epochs["train_s"] > 0).all()
        runs = read_table(exp / "retrain_runs.csv")
        assert len(runs) == 1
        for col in ROUGE + ["test_loss", "val_loss", "trainable_params", "mean_train_s",
                            "max_peak_mem_mb"]:
            assert col in runs and runs[col].notna().all(), col
        assert runs[ROUGE].ge(0).all().all() and runs[ROUGE].le(1).all().all()
        assert (runs["rouge_samples"] == 8).all()
        job = exp / "retrained" / runs["job"].iloc[0]
        meta = json.loads((job / "meta.json").read_text())
        assert meta["config"]["stage"] == "retrain" and "git_commit" in meta
        assert meta["config"]["num_beams"] == 4 and meta["config"]["no_repeat_ngram_size"] == 3
        # every generated summary beside its reference
        lines = [json.loads(x) for x in (job / "summaries.jsonl").read_text().splitlines()]
        assert len(lines) == 8 and all(x["reference"] and "generated" in x for x in lines)
    # the soft prompt is num_virtual_tokens x n_embd (64 in the smoke model)
    prompt = read_table(storage / "cnndm-prompt" / "trials.csv")
    assert (prompt["trainable_params"] == prompt["num_virtual_tokens"] * 64).all()
    table = read_table(storage / "cnndm" / "comparison.csv")
    assert table["method"].tolist() == ["prompt", "lora", "last-layers"]
    for col in ("test_loss_mean", "test_rouge1_mean", "test_rouge2_mean", "test_rougeL_mean",
                "trainable_params_mean", "mean_train_s_mean", "max_peak_mem_mb_mean"):
        assert table[col].notna().all(), col
    assert table.set_index("method")["trainable_params_mean"].idxmin() == "prompt"
    assert (table["max_train_mem_mb_mean"] > 0).all() and (table["rouge_articles"] == 8).all()
    # ROUGE-1/2/L in one grouped chart; one chart per other measure
    for png in ("rouge", "test_loss", "trainable_params", "max_train_mem_mb"):
        img = Image.open(storage / "cnndm" / f"comparison_{png}.png").convert("L")
        lo, hi = img.getextrema()
        assert img.size[0] > 200 and hi - lo > 100  # drawn, not blank
    assert not (storage / "cnndm" / "comparison_test_rougeL.png").exists()
    assert "Methods compared on the test split" in r.stdout
    # The folder the command names for comparison.csv is a report's input: its three methods,
    # the comparison as "mean ± sd" text and its charts
    from results.__main__ import main as results_main

    capsys.readouterr()
    assert results_main(["report", str(storage / "cnndm")]) == 0
    md = (storage / "cnndm" / "report" / "report.md").read_text()
    for method in ("cnndm-prompt", "cnndm-lora", "cnndm-last-layers"):
        assert f"## {method}" in md
    comparison = md.split("### Comparison")[1]
    assert "test_rouge1_mean" not in comparison and "test_rouge1" in comparison
    assert "comparison_rouge.png" in comparison
    assert "the best epoch's weights" in md


@pytest.mark.slow
def test_smoke_without_data(cnndm_prompt_smoke, smoke_storage):
    # `--smoke-test --method prompt --num-samples 3`: the session's sweep, which test_report
    # also reads
    storage = smoke_storage
    r = cnndm_prompt_smoke
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "generated template articles" in r.stdout
    runs = read_table(storage / "cnndm-prompt" / "retrain_runs.csv")
    assert set(ROUGE) <= set(runs.columns)
    assert not (storage / "cnndm" / "comparison.csv").exists()  # one method: no comparison


def _csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + rows) + "\n")
    return str(path.parent)


CASES = {
    "unknown-method": (lambda t: ["--method", "adapters"], ["--method", "invalid choice", "'adapters'"]),
    "missing-column": (lambda t: ["--data-dir", _csv(t / "d" / "x.csv", "id,article,summary",
                                                     [f"{i},a{i},s{i}" for i in range(10)])],
                       ["x.csv", "missing required column 'highlights'"]),
    "empty-rows": (lambda t: ["--data-dir", _csv(t / "d" / "x.csv", "id,article,highlights",
                                                 [f"{i},a{i},s{i}" for i in range(8)] + ["8,,s", "9,a,"])],
                   ["2 of 10 rows have an empty article or highlights", "--max-empty-fraction"]),
    "virtual-tokens": (lambda t: ["--method", "prompt", "--space", "num_virtual_tokens=0,5"],
                       ["num_virtual_tokens=0", ">= 1"]),
    "too-long": (lambda t: ["--max-source-tokens", "240", "--max-target-tokens", "30"],
                 ["--max-source-tokens 240", "--max-target-tokens 30", "context of 256"]),
    "too-long-prompt": (lambda t: ["--method", "prompt", "--max-source-tokens", "150"],
                        ["up to 100 virtual tokens", "context of 256"]),
    "missing-data": (lambda t: ["--data-dir", str(t / "nope")], ["--data-dir", "no such file"]),
    "last-layers-too-many": (lambda t: ["--method", "last-layers", "--space", "n_last_layers=1,3"],
                             ["n_last_layers", "the model has 2 blocks"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_summarize_bad_input(case, tmp_path, monkeypatch, capsys):
    storage = tmp_path / "runs"
    make_args, needles = CASES[case]
    r = run_main(SCRIPT, ["--smoke-test", *make_args(tmp_path), "--storage-path", str(storage)],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    assert not r.ray_started and not storage.exists()


def test_hub_data_offline_names_data_dir(tmp_path):
    storage = tmp_path / "runs"
    r = run_cli(SCRIPT, ["--method", "lora", "--storage-path", str(storage)], tmp_path,
                timeout=120)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    assert "cnn_dailymail" in r.stderr and "--data-dir" in r.stderr
    assert not r.ray_started and not storage.exists()
