"""Model, tokenizer, data and experiment inputs that used to be accepted and then make every
trial fail or train on nonsense, or that gave a traceback: each exits 2 before Ray starts,
names the flag (or file) and the value and says what is allowed, and writes nothing.

Every broken input is built here from the tiny GPT-2 of ``conftest.py`` (a few files copied,
cut short or rewritten); the commands run in this process (``run_main``)."""
import json
import shutil

import pytest

from conftest import COLA_SCRIPT, REPO, run_main

KD_SCRIPT = REPO / "search" / "cola_kd.py"
CNNDM_SCRIPT = REPO / "search" / "cnndm_summarize.py"
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def _copy(src, dst, names):
    dst.mkdir(parents=True)
    for n in names:
        shutil.copy(src / n, dst / n)
    return dst


def _cut_short(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_model):
    """A saved 2-label classifier and a sequence-classification LoRA adapter on the tiny model
    (the adapter names its base by absolute path, as a retrain output does)."""
    from pathlib import Path

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("teachers")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=2, pad_token_id=tok.eos_token_id)
    model.save_pretrained(root / "classifier")
    tok.save_pretrained(root / "classifier")
    peft = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["c_attn"]))
    peft.save_pretrained(root / "adapter")
    cfg = json.loads((root / "adapter" / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == Path(tiny_model)
    return root


def _headless_adapter(teachers, tmp):
    """The adapter without the classification head it trained: the head would start random."""
    from safetensors.torch import load_file, save_file

    out = tmp / "headless"
    shutil.copytree(teachers / "adapter", out)
    weights = load_file(out / "adapter_model.safetensors")
    save_file({k: v for k, v in weights.items() if ".score." not in k},
              out / "adapter_model.safetensors")
    cfg = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "modules_to_save": None}))
    return out


def _causal_lm_adapter(tiny_model, tmp):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(lm, LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["c_attn"])
                   ).save_pretrained(tmp / "lm_adapter")
    return tmp / "lm_adapter"


def _cut_classifier(teachers, tmp):
    shutil.copytree(teachers / "classifier", tmp / "cut")
    _cut_short(tmp / "cut" / "model.safetensors")
    return tmp / "cut"


def _cut_adapter(teachers, tmp):
    shutil.copytree(teachers / "adapter", tmp / "cut_adapter")
    _cut_short(tmp / "cut_adapter" / "adapter_model.safetensors")
    return tmp / "cut_adapter"


# (case id, function of (tiny model, teachers, tmp) -> extra args, substrings of the message)
KD_CASES = [
    ("teacher-base-lm", lambda m, t, tmp: ["--teacher", m],
     ["--teacher '{m}'", "no weights for score.weight", "start random",
      "trained 2-label classifier"]),
    ("teacher-adapter-without-head",
     lambda m, t, tmp: ["--teacher", str(_headless_adapter(t, tmp))],
     ["--teacher '{tmp}/headless'", "no weights for score.weight",
      "its base model or the adapter"]),
    ("teacher-causal-lm-adapter", lambda m, t, tmp: ["--teacher", str(_causal_lm_adapter(m, tmp))],
     ["--teacher '{tmp}/lm_adapter'", "task_type 'CAUSAL_LM'", "'SEQ_CLS'"]),
    ("teacher-weights-cut-short", lambda m, t, tmp: ["--teacher", str(_cut_classifier(t, tmp))],
     ["--teacher '{tmp}/cut'", "model.safetensors is damaged or cut short"]),
    ("teacher-adapter-cut-short", lambda m, t, tmp: ["--teacher", str(_cut_adapter(t, tmp))],
     ["--teacher '{tmp}/cut_adapter'", "adapter_model.safetensors is damaged or cut short"]),
    ("tokenizer-missing", lambda m, t, tmp: ["--teacher", str(t / "classifier"),
                                             "--tokenizer", str(tmp / "nowhere")],
     ["--tokenizer '{tmp}/nowhere'", "no such directory"]),
    ("tokenizer-without-files",
     lambda m, t, tmp: ["--teacher", str(t / "classifier"), "--tokenizer",
                        str(_copy(t / "classifier", tmp / "notok", ["config.json"]))],
     ["--tokenizer '{tmp}/notok'", "turns text into no tokens", "tokenizer.json"]),
    ("kd-max-length-beyond-context",
     lambda m, t, tmp: ["--teacher", str(t / "classifier"), "--max-length", "1000"],
     ["--max-length 1000", "256 positions", "allowed: 1 to 256"]),
]


def _model_dir(tiny_model, tmp, case):
    from pathlib import Path

    src = Path(tiny_model)
    if case == "no-tokenizer":
        return _copy(src, tmp / "m", ["config.json", "model.safetensors"])
    if case == "no-weights":
        return _copy(src, tmp / "m", ["config.json", *TOKENIZER])
    d = _copy(src, tmp / "m", ["model.safetensors", *TOKENIZER])
    (d / "config.json").write_text('{"model_type": "gpt2",' if case == "bad-json" else "[1, 2]")
    return d


LORA_CASES = [
    ("model-without-tokenizer", lambda m, tmp: ["--model", str(_model_dir(m, tmp, "no-tokenizer"))],
     ["--model '{tmp}/m'", "turns text into no tokens", "tokenizer.json"]),
    ("model-without-weights", lambda m, tmp: ["--model", str(_model_dir(m, tmp, "no-weights"))],
     ["--model '{tmp}/m'", "no model weights", "model.safetensors"]),
    ("model-config-broken-json", lambda m, tmp: ["--model", str(_model_dir(m, tmp, "bad-json"))],
     ["--model '{tmp}/m'", "config.json is not valid JSON", "line 1 column 23"]),
    ("model-config-a-list", lambda m, tmp: ["--model", str(_model_dir(m, tmp, "list"))],
     ["--model '{tmp}/m'", "config.json holds a JSON list", "an object"]),
    ("max-length-beyond-context", lambda m, tmp: ["--model", m, "--max-length", "257"],
     ["--max-length 257", "(256 positions)", "allowed: 1 to 256"]),
    ("warm-start-record-a-list", lambda m, tmp: ["--warm-start", str(_listed_record(tmp))],
     ["--warm-start '{tmp}/old'", "experiment.json holds a JSON list", "experiment record"]),
]


def _listed_record(tmp):
    (tmp / "old").mkdir()
    (tmp / "old" / "experiment.json").write_text(json.dumps([{"study": "cola_lora"}]))
    return tmp / "old"


def _check(r, needles, storage, **names):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    for needle in needles:
        assert needle.format(**names) in r.stderr, (needle, r.stderr[-3000:])
    assert not r.ray_started, "Ray was started"
    assert not storage.exists(), "something was written"


@pytest.mark.parametrize("case", KD_CASES, ids=[c[0] for c in KD_CASES])
def test_bad_teacher_or_tokenizer_exits_2(case, tmp_path, monkeypatch, capsys, tiny_model,
                                          teachers):
    storage = tmp_path / "runs"
    extra = case[1](tiny_model, teachers, tmp_path)
    r = run_main(KD_SCRIPT, ["--smoke-test", "--storage-path", str(storage), *extra], tmp_path,
                 monkeypatch, capsys)
    _check(r, case[2], storage, m=tiny_model, tmp=tmp_path)


def test_good_teachers_still_load(teachers):
    """The checks refuse only what is broken: a whole classifier and an adapter that holds
    its head load as before."""
    from models.teacher import load_teacher

    for d, kind in ((teachers / "classifier", "sequence classifier"),
                    (teachers / "adapter", "LoRA adapter")):
        _, tok, info = load_teacher(str(d))
        assert info["kind"].startswith(kind) and len(tok) > 1


@pytest.mark.parametrize("case", LORA_CASES, ids=[c[0] for c in LORA_CASES])
def test_bad_model_or_length_exits_2(case, tmp_path, monkeypatch, capsys, tiny_model):
    storage = tmp_path / "runs"
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", str(storage),
                               *case[1](tiny_model, tmp_path)], tmp_path, monkeypatch, capsys)
    _check(r, case[2], storage, tmp=tmp_path)


def test_summarization_model_without_weights_exits_2(tmp_path, monkeypatch, capsys,
                                                     tiny_model):
    storage = tmp_path / "runs"
    model = _model_dir(tiny_model, tmp_path, "no-weights")
    r = run_main(CNNDM_SCRIPT, ["--smoke-test", "--method", "lora", "--model", str(model),
                                "--storage-path", str(storage)], tmp_path, monkeypatch, capsys)
    _check(r, ["--model '{tmp}/m'", "no model weights"], storage, tmp=tmp_path)


ROWS = [f'{i},"Article {i} says the mayor opened a bridge.","The mayor opened a bridge."'
        for i in range(12)]
CSV_CASES = [
    ("column-twice-after-stripping", "id,article,highlights, article\n"
     + "\n".join(r + ',"x"' for r in ROWS),
     ["bad.csv: column 'article' appears 2 times", "' article'", "named once"]),
    ("column-twice-after-stripping-label", "id,highlights ,article,highlights\n"
     + "\n".join(r + ',"x"' for r in ROWS), ["bad.csv: column 'highlights' appears 2 times"]),
    ("trailing-comma-on-every-row", "id,article,highlights\n" + "\n".join(r + "," for r in ROWS),
     ["bad.csv: rows have 4 fields but the header names 3", "trailing comma"]),
]


@pytest.mark.parametrize("case", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_bad_cnndm_csv_exits_2(case, tmp_path, monkeypatch, capsys):
    storage = tmp_path / "runs"
    (tmp_path / "bad.csv").write_text(case[1] + "\n", encoding="utf-8")
    r = run_main(CNNDM_SCRIPT, ["--smoke-test", "--method", "lora", "--data-dir",
                                str(tmp_path / "bad.csv"), "--storage-path", str(storage)],
                 tmp_path, monkeypatch, capsys)
    _check(r, case[2], storage)


SEPARATORS = "\u2028\u0085\u2029\x0b\x0c"  # legal inside a field; str.splitlines() ends lines there


def test_line_separators_inside_a_sentence_are_text(tmp_path):
    """A CoLA sentence or an article holding U+2028, NEL and friends is one row, kept as
    written."""
    from models.data.cnndm import read_cnndm_csv
    from models.data.cola import load_cola_dir

    raw = tmp_path / "cola" / "raw"
    raw.mkdir(parents=True)
    odd = f"The cat{SEPARATORS}sat on the mat."
    rows = [f"gj04\t1\t\t{odd}", "gj04\t0\t*\tSat the on cat mat."] * 3
    for name in ("in_domain_train.tsv", "in_domain_dev.tsv", "out_of_domain_dev.tsv"):
        (raw / name).write_text("\r\n".join(rows) + "\r\n", encoding="utf-8")
    splits = load_cola_dir(tmp_path / "cola")
    assert splits.train_text == [odd, "Sat the on cat mat."] * 3
    assert splits.train_labels == [1, 0] * 3

    (tmp_path / "a.csv").write_text("id,article,highlights\n" + "\n".join(
        f'{i},"Article {i}{SEPARATORS}ends.","Summary {i}."' for i in range(3)) + "\n",
        encoding="utf-8")
    rows, dropped = read_cnndm_csv(tmp_path / "a.csv", max_empty_fraction=0.01)
    assert rows[0] == (f"Article 0{SEPARATORS}ends.", "Summary 0.") and dropped == 0


def _record_as_list(root, name="cola_lora"):
    """An experiment directory with one finished trial whose experiment.json is a list."""
    exp = root / name
    (exp / "trial_a").mkdir(parents=True)
    (exp / "trial_a" / "params.json").write_text(json.dumps({"learning_rate": 0.001}))
    (exp / "trial_a" / "result.json").write_text(json.dumps(
        {"trial_id": "t0001", "epoch": 1, "val_mcc": 0.2, "best_val_mcc": 0.2,
         "training_iteration": 1}) + "\n")
    (exp / "experiment.json").write_text(json.dumps(["not", "a", "record"]))
    return exp


def test_report_describes_a_record_that_is_not_an_object(tmp_path, capsys):
    """``python -m results report``: the damaged record is a problem the report lists (exit 0;
    1 with --strict, as documented), and the trials are still reported."""
    from results.__main__ import main

    exp = _record_as_list(tmp_path)
    assert main(["report", str(exp), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert f"{exp}/experiment.json holds a JSON list, not an experiment record" in err, err
    assert "| t0001 |" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["report", str(exp), "--out", str(tmp_path / "rep2"), "--strict"]) == 1


def test_report_group_lookup_skips_a_record_that_is_not_an_object(tmp_path, capsys):
    """A folder that is no experiment, beside one whose record is a list: the group lookup
    reads that record; the folder is refused (exit 2), not a traceback."""
    from results.__main__ import main

    _record_as_list(tmp_path, "cnndm-lora")
    (tmp_path / "cnndm").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "cnndm")])
    assert e.value.code == 2
    assert "not an experiment directory" in capsys.readouterr().err
    assert not (tmp_path / "cnndm" / "report").exists()


def test_teacher_refuses_sentences_longer_than_its_context(teachers):
    """With --tokenizer from elsewhere nothing may know the teacher's context before its
    pass: a longer sentence is an InputError naming --max-length, not an IndexError."""
    import numpy as np

    from models.errors import InputError
    from models.teacher import load_teacher, teacher_logits

    model, tok, _ = load_teacher(str(teachers / "classifier"))
    ids = [np.arange(10, dtype=np.int32), np.arange(257, dtype=np.int32) % 50]
    with pytest.raises(InputError, match=r"--max-length: a sentence of 257 tokens .* context "
                                         r"of 256 positions"):
        teacher_logits(model, ids, pad_id=tok.pad_token_id)
    logits, _ = teacher_logits(model, ids[:1], pad_id=tok.pad_token_id)
    assert logits.shape == (1, 2)
