"""GGUF model files: conversion to a cached model directory, reuse, bad files, and every study
on a tiny random Llama given as ``--model FILE.gguf`` (written here with the gguf package's
writer, laid out as llama.cpp's converter does)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import COLA_SCRIPT, REPO, SMOKE_SERIAL, run_cli, run_main


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, synthetic) -> str:
    from models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("llama") / "model",
                            synthetic.train_text + synthetic.dev_text)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_llama) -> Path:
    from models.tiny import write_llama_gguf

    return Path(write_llama_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny.gguf"))


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PEFT_SWEEPS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_conversion_gives_the_same_model_and_is_reused(tiny_gguf, tiny_llama, cache, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.gguf import convert
    from models.hf import resolve_model

    out = Path(resolve_model(str(tiny_gguf)))
    assert out.parent == cache / "gguf"
    assert "converting once" in capsys.readouterr().err
    meta = json.loads((out / "conversion.json").read_text())
    assert meta["source"] == "tiny.gguf" and meta["architecture"] == "llama"

    src, conv = (AutoModelForCausalLM.from_pretrained(d) for d in (tiny_llama, out))
    tok_src, tok_conv = (AutoTokenizer.from_pretrained(d) for d in (tiny_llama, out))
    text = "The cat sat on the mat."
    ids = tok_src(text, return_tensors="pt").input_ids
    assert ids.tolist() == tok_conv(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.allclose(src(ids).logits, conv(ids).logits, atol=1e-5)
    assert conv.config.tie_word_embeddings and tok_conv.pad_token is not None

    stamp = (out / "conversion.json").stat().st_mtime_ns
    copy = tiny_gguf.parent / "renamed.gguf"
    shutil.copy(tiny_gguf, copy)
    # the same content under another name: the same conversion, not a second one
    assert convert(str(copy)) == str(out)
    assert resolve_model(str(tiny_gguf)) == str(out)
    err = capsys.readouterr().err
    assert err.count("using the conversion") == 2 and "converting once" not in err
    assert (out / "conversion.json").stat().st_mtime_ns == stamp


def test_an_interrupted_conversion_is_redone(tiny_gguf, cache, capsys):
    from models.gguf import convert

    out = Path(convert(str(tiny_gguf)))
    (out / "conversion.json").unlink()  # as if killed before the last write
    assert convert(str(tiny_gguf)) == str(out)
    assert "converting once" in capsys.readouterr().err
    assert (out / "conversion.json").is_file()


def _bad_files(tmp: Path, good: Path) -> dict:
    import gguf
    import numpy as np

    text = tmp / "notes.gguf"
    text.write_text("these are notes, not a model\n")
    cut = tmp / "cut.gguf"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    header_only = tmp / "header.gguf"
    header_only.write_bytes(data[:10])
    odd = tmp / "odd.gguf"
    w = gguf.GGUFWriter(str(odd), "nonesuch")
    w.add_tensor("x.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {text: "not a GGUF file", cut: "truncated or damaged",
            header_only: "truncated or damaged", odd: "architecture 'nonesuch'",
            tmp / "missing.gguf": "no such file"}


def test_bad_gguf_files_raise_input_errors_naming_them(tiny_gguf, tmp_path, cache):
    from models.errors import InputError
    from models.gguf import convert

    for path, why in _bad_files(tmp_path, tiny_gguf).items():
        with pytest.raises(InputError) as e:
            convert(str(path))
        assert str(path) in str(e.value) and why in str(e.value), (path, str(e.value))
    assert not list((cache / "gguf").glob("*")) if (cache / "gguf").exists() else True


@pytest.mark.parametrize("name", ["cut", "notes"])
def test_cli_exits_2_on_a_bad_gguf_before_ray(name, tiny_gguf, tmp_path, monkeypatch, capsys):
    bad = {p.stem: p for p in _bad_files(tmp_path, tiny_gguf)}[name]
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--model", str(bad)], tmp_path, monkeypatch,
                 capsys, PEFT_SWEEPS_CACHE=str(tmp_path / "cache"))
    assert r.returncode == 2 and not r.ray_started
    assert f"--model '{bad}'" in r.stderr and "Traceback" not in r.stderr


def test_llama_lora_defaults_adapt_every_projection(tiny_llama):
    from models.cola_lora import ColaLoraConfig
    from models.hf import load_sequence_classifier
    from models.lora import LLAMA_TARGET_MODULES, add_lora

    base = load_sequence_classifier(tiny_llama, num_labels=2, pad_token_id=0)
    model = add_lora(base, ColaLoraConfig(model=tiny_llama), "SEQ_CLS")
    adapted = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters()
               if "lora_A" in n}
    assert adapted == set(LLAMA_TARGET_MODULES)


def test_last_layers_on_llama_train_the_top_blocks_and_final_norm(tiny_llama):
    from models.summarize import load_causal_lm
    from models.summarize_last_layers import freeze_all_but_last

    model = freeze_all_but_last(load_causal_lm(tiny_llama, pad_token_id=0), 1)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("model.layers.1.", "model.norm.")) for n in trained)
    assert "model.norm.weight" in trained
    # tied head = the input embedding: frozen, or every token's embedding would train
    assert not model.get_input_embeddings().weight.requires_grad


@pytest.mark.slow
def test_every_study_runs_on_a_tiny_llama_gguf(tiny_gguf, tmp_path):
    """CoLA LoRA, then distillation from its retrained Llama adapter, then the three
    summarization methods, all from ``--model tiny.gguf``."""
    env = {"PEFT_SWEEPS_CACHE": str(tmp_path / "cache")}
    runs = tmp_path / "runs"
    short = ["--num-samples", "2", "--max-epochs", "2", "--retrain-top-k", "1",
             "--retrain-seeds", "1", "--storage-path", str(runs)]
    r = run_cli(COLA_SCRIPT, ["--smoke-test", *SMOKE_SERIAL, "--model", str(tiny_gguf),
                              "--name", "llama", *short], tmp_path, **env)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = json.loads((runs / "llama" / "experiment.json").read_text())
    assert str(tmp_path / "cache" / "gguf") in json.dumps(exp)
    adapter = next((runs / "llama" / "retrained").glob("*/adapter_config.json")).parent
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] \
        .startswith(str(tmp_path / "cache" / "gguf"))

    r = run_cli(REPO / "search" / "cola_kd.py",
                ["--smoke-test", *SMOKE_SERIAL, "--teacher", str(adapter), "--name", "kd", *short],
                tmp_path, **env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LoRA adapter on" in r.stdout + r.stderr

    r = run_cli(REPO / "search" / "cnndm_summarize.py",
                ["--smoke-test", "--method", "all", "--model", str(tiny_gguf), "--name", "sum",
                 *short], tmp_path, timeout=900, **env)
    assert r.returncode == 0, r.stderr[-3000:]
    for method in ("lora", "prompt", "last-layers"):
        trials = (runs / f"sum-{method}" / "trials.csv").read_text().splitlines()
        assert len(trials) == 1 + 2, (method, trials)  # header + --num-samples
