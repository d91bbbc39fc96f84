#!/usr/bin/env python
"""Reference results: the three studies on one real pretrained decoder LM (SmolLM2-135M from
its GGUF file, or any model directory) and the real data, from one command. It runs every
sweep, retrain and baseline itself and writes a Markdown table of what that run measured;
no number in the table comes from anywhere else.

    python bench/reference_results.py --model FILE.gguf --data-root DATA [--full] [--out DIR]

``DATA`` holds ``cola_public/`` (CoLA 1.1) and ``cnn_dailymail/`` (a Kaggle-layout CSV). The
default budget is sized for a 2-core CPU (the subset sizes, trials, epochs and seeds are
printed in the table); ``--full`` is the budget for a GPU (the whole CoLA training set).

Writes ``OUT/<experiment>/`` for every study (``python -m results report OUT/ref-cola-lora``
works on each), ``OUT/logs/`` (each command's console) and ``OUT/reference.md``.
Last line: the path of the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Subset sizes, trials, epochs and seeds of each budget. CPU: about 80 min on 2 cores for
# SmolLM2 (CoLA + LoRA ~40, distillation ~10, summarization ~30).
BUDGETS = {
    "cpu": {"cola": {"max_train_samples": 2000, "num_samples": 6, "max_epochs": 2,
                     "retrain_seeds": 3},
            "kd": {"max_train_samples": 2000, "num_samples": 6, "max_epochs": 4,
                   "retrain_seeds": 3},
            # Summarization's training dominates the CPU budget: 40 training articles, one
            # epoch per trial. Test summaries by the sweeps' own decoding (beam 4, no repeated
            # trigram; KV-cached for every method, bench/prompt_decoding.py) of 10 articles.
            "sum": {"max_train_samples": 40, "num_samples": 2, "max_epochs": 1,
                    "retrain_seeds": 2, "max_source_tokens": 256, "max_target_tokens": 64,
                    "rouge_samples": 10, "num_beams": 4, "batch_size": 4, "grad_accum": 2}},
    "full": {"cola": {"max_train_samples": None, "num_samples": 24, "max_epochs": 4,
                      "retrain_seeds": 5},
             "kd": {"max_train_samples": None, "num_samples": 16, "max_epochs": 8,
                    "retrain_seeds": 5},
             "sum": {"num_samples": 6, "max_epochs": 3, "retrain_seeds": 3,
                     "max_source_tokens": 512, "max_target_tokens": 128, "rouge_samples": 10,
                     "batch_size": 8, "grad_accum": 1}},
}
SUM_METHODS = ("prompt", "lora", "last-layers")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="GGUF file or Hugging Face model directory")
    p.add_argument("--data-root", required=True,
                   help="directory with cola_public/ and cnn_dailymail/")
    p.add_argument("--out", default="reference_results", help="where experiments and the table go")
    p.add_argument("--full", action="store_true", help="the GPU budget (whole training set)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all Ray finds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render-only", action="store_true",
                   help="write the table from the experiments already in --out (no runs)")
    p.add_argument("--studies", nargs="+", default=["cola", "kd", "sum"],
                   choices=["cola", "kd", "sum"],
                   help="a subset (kd needs cola's retrained adapter in --out)")
    args = p.parse_args(argv)
    root = Path(args.data_root)
    for sub in ("cola_public", "cnn_dailymail"):
        if not (root / sub).is_dir():
            p.error(f"--data-root {args.data_root!r}: no {sub}/ in it")
    if not Path(args.model).exists():
        p.error(f"--model {args.model!r}: no such file or directory")
    return args


# --- running the studies -----------------------------------------------------------------------
def flags(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        if v is None or v is False:
            continue
        out += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return out


def run_study(script: str, argv: list[str], log: Path) -> float:
    """One study's command, its console to ``log`` (progress lines echoed); its wall seconds."""
    cmd = [sys.executable, str(REPO / "search" / script), *argv]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if line.startswith(("[gguf]", "==", "plan", "retrain", "KD gain", "table", "best")):
                print(f"  {line.rstrip()}", flush=True)
    if proc.returncode != 0:
        sys.exit(f"{script} failed (exit {proc.returncode}); its console: {log}\n"
                 + "".join(log.read_text().splitlines(keepends=True)[-30:]))
    return time.time() - t0


def resources(args) -> list[str]:
    return (["--gpus", str(args.gpus)] if args.gpus is not None else []) + \
        ([] if args.full else ["--cpus-per-trial", "1"])


def best_runs(exp_dir: Path):
    import pandas as pd

    runs = pd.read_csv(exp_dir / "retrain_runs.csv")
    return runs[runs["rank"] == 1]


# --- baselines ------------------------------------------------------------------------------
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")


def lead3(article: str) -> str:
    """The first three sentences (a regular-expression split: no sentence model offline)."""
    return " ".join(SENTENCE_END.split(article.strip())[:3])


def summarization_baselines(args, budget: dict) -> list[dict]:
    """Lead-3 and the untuned model's own summary after the separator (zero-shot, the same
    decoding as the retrains) on the test articles the summarization retrains are scored on."""
    import torch

    from models.data.cnndm import SEPARATOR, load_cnndm_dir, tokenize_articles
    from models.hf import count_parameters, load_tokenizer, resolve_model
    from models.summarize import (generate_summaries, load_causal_lm, rouge, summaries_jsonl,
                                  token_weighted_loss)

    articles = load_cnndm_dir(str(Path(args.data_root) / "cnn_dailymail"), seed=args.seed)
    n = budget["rouge_samples"]
    test = articles.test[:n]
    refs = [s for _, s in test]
    rows = [{"method": "Lead-3 (baseline)", "n_seeds": 1, "trainable_params": 0,
             **{f"test_{k}": v for k, v in rouge([lead3(a) for a, _ in test], refs).items()}}]
    model_dir = resolve_model(args.model, flag="--model")
    tok = load_tokenizer(model_dir)
    data = tokenize_articles(articles, tok, separator=SEPARATOR,
                             max_source_tokens=budget["max_source_tokens"],
                             max_target_tokens=budget["max_target_tokens"],
                             rouge_samples=n, seed=args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(model_dir, pad_token_id=data.pad_token_id).to(device).eval()
    t0 = time.time()
    preds = generate_summaries(model, data, data.test[:n], batch_size=4, device=device,
                               num_beams=budget.get("num_beams", 4), no_repeat_ngram_size=3,
                               min_summary_tokens=8)
    loss = token_weighted_loss(model, data.test, batch_size=4, pad_id=data.pad_token_id,
                               device=device)
    out = Path(args.out) / "baselines"
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero_shot_summaries.jsonl").write_text(summaries_jsonl(preds, refs))
    (out / "lead3_summaries.jsonl").write_text(
        summaries_jsonl([lead3(a) for a, _ in test], refs))
    rows.append({"method": "zero-shot (untuned model)", "n_seeds": 1, "trainable_params": 0,
                 "total_params": count_parameters(model)["total_params"], "test_loss": loss,
                 "generate_s": time.time() - t0,
                 **{f"test_{k}": v for k, v in rouge(preds, refs).items()}})
    return rows


# --- the table -----------------------------------------------------------------------------
def pm(values, digits: int = 4) -> str:
    """mean ± sd (n) of a column of seeds."""
    v = [float(x) for x in values if not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "–"
    mean = sum(v) / len(v)
    if len(v) == 1:
        return f"{mean:.{digits}f} (n=1)"
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    return f"{mean:.{digits}f} ± {sd:.{digits}f} (n={len(v)})"


def cola_section(exp: Path) -> list[str]:
    import numpy as np

    best = best_runs(exp)
    # (experiments recorded before the tables were tidied name them config/<name>)
    cfg = {c.removeprefix("config/"): best[c].iloc[0] for c in best
           if c.removeprefix("config/").startswith("lora_")
           or c.removeprefix("config/") in ("learning_rate", "batch_size", "weight_decay")}
    lines = ["### CoLA + LoRA (GLUE dev; selection on a held-out slice of train)", "",
             "| model | split | accuracy | MCC |", "| --- | --- | --- | --- |"]
    for split, label in (("dev", "dev (all)"), ("dev_in", "in-domain"), ("dev_out", "out-of-domain")):
        if f"{split}_accuracy" in best:
            lines.append(f"| LoRA, best configuration | {label} | {pm(best[f'{split}_accuracy'])} "
                         f"| {pm(best[f'{split}_mcc'])} |")
    labels = json.loads((exp / "dev_labels.json").read_text()) if (exp / "dev_labels.json").is_file() \
        else None
    if labels:
        for split, ys in labels.items():
            share = float(np.mean(ys))
            lines.append(f"| majority class (baseline) | {split} | {max(share, 1 - share):.4f} "
                         f"| 0.0000 |")
    show = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines += ["", f"Best configuration: {', '.join(f'{k} = {show(v)}' for k, v in cfg.items())}; "
              f"trainable parameters {int(best['trainable_params'].iloc[0]):,}.", ""]
    return lines


def kd_section(exp: Path, model_name: str = "the base model") -> list[str]:
    import pandas as pd

    table = pd.read_csv(exp / "comparison.csv")
    lines = ["### CoLA distillation (GLUE dev)", "",
             "| model | accuracy | MCC | parameters | CPU sentences/s |",
             "| --- | --- | --- | --- | --- |"]
    kd = {}
    for _, r in table.iterrows():
        # the teacher's base model by name, not by this machine's cache path
        label = re.sub(r" on \S+\)$", f" on {model_name})", str(r["model"]))
        jobs = None
        if r["model"] in ("KD student", "scratch student"):
            d = exp if label == "KD student" else exp.parent / (exp.name + "-scratch")
            jobs = best_runs(d)
            kd[label] = list(jobs["dev_mcc"])
        acc = pm(jobs["dev_accuracy"]) if jobs is not None else f"{float(r['dev_accuracy']):.4f} (n=1)"
        mcc = pm(jobs["dev_mcc"]) if jobs is not None else f"{float(r['dev_mcc']):.4f} (n=1)"
        lines.append(f"| {label} | {acc} | {mcc} | {int(r['params']):,} | "
                     f"{float(r['cpu_sentences_per_s']):,.0f} |")
    if len(kd) == 2:
        (a, b) = kd["KD student"], kd["scratch student"]
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        var = lambda v: sum((x - mean(v)) ** 2 for x in v) / max(len(v) - 1, 1)  # noqa: E731
        gain, sd = mean(a) - mean(b), math.sqrt((var(a) + var(b)) / 2)
        from results.comparison import kd_verdict

        lines += ["", f"KD gain in dev MCC {gain:+.4f}; pooled seed sd {sd:.4f} "
                  f"(n={len(a)} and {len(b)} seeds): {kd_verdict(gain, sd)}."]
    return lines + [""]


def sum_section(out: Path, name: str, baselines: list[dict]) -> list[str]:
    cols = (("test_loss", "test loss", 3), ("test_rouge1", "ROUGE-1", 3),
            ("test_rouge2", "ROUGE-2", 3), ("test_rougeL", "ROUGE-L", 3))
    lines = ["### CNN/DailyMail summarization (test articles)", "",
             "| method | " + " | ".join(c[1] for c in cols)
             + " | trainable params | s / epoch | peak MiB |",
             "| --- " * (len(cols) + 4) + "|"]
    for method in SUM_METHODS:
        d = out / f"{name}-{method}"
        if not (d / "retrain_runs.csv").is_file():
            continue
        best = best_runs(d)
        lines.append(f"| {method} | " + " | ".join(pm(best[c], k) for c, _, k in cols)
                     + f" | {int(best['trainable_params'].iloc[0]):,} | "
                     f"{pm(best['mean_train_s'], 1)} | {pm(best['max_peak_mem_mb'], 0)} |")
    for b in baselines:
        lines.append(f"| {b['method']} | " + " | ".join(
            f"{b[c]:.{k}f}" if c in b else "–" for c, _, k in cols) + " | 0 | – | – |")
    return lines + [""]


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}; torch {torch.__version__}"


def main(argv=None) -> int:
    args = parse_args(argv)
    from models.provenance import provenance

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = BUDGETS["full" if args.full else "cpu"]
    root = Path(args.data_root).resolve()
    common = ["--storage-path", str(out), "--seed", str(args.seed), "--retrain-top-k", "1",
              *resources(args)]
    walls = {}
    if args.render_only:
        args.studies = []
    if "cola" in args.studies:
        b = budget["cola"]
        walls["CoLA + LoRA"] = run_study("cola_lora.py", [
            "--model", args.model, "--data-dir", str(root / "cola_public"), "--name",
            "ref-cola-lora", *flags(b), *common], out / "logs" / "cola_lora.log")
        write_dev_labels(out / "ref-cola-lora", root / "cola_public")
    if "kd" in args.studies:
        b = budget["kd"]
        job = best_runs(out / "ref-cola-lora")["job"].iloc[0]
        teacher = out / "ref-cola-lora" / "retrained" / job
        walls["distillation"] = run_study("cola_kd.py", [
            "--teacher", str(teacher), "--data-dir", str(root / "cola_public"),
            "--with-baseline", "--name", "ref-cola-kd", *flags(b), *common],
            out / "logs" / "cola_kd.log")
    baselines = []
    if "sum" in args.studies:
        b = budget["sum"]
        walls["summarization"] = run_study("cnndm_summarize.py", [
            "--model", args.model, "--data-dir", str(root / "cnn_dailymail"), "--method", "all",
            "--name", "ref-sum", *flags(b), *common], out / "logs" / "cnndm_summarize.log")
        t0 = time.time()
        baselines = summarization_baselines(args, b)
        walls["summarization baselines"] = time.time() - t0
    # Wall times and baselines of earlier runs of --studies subsets into the same --out.
    saved = out / "reference_runs.json"
    before = json.loads(saved.read_text()) if saved.is_file() else {}
    walls = {**before.get("walls", {}), **walls}
    baselines = baselines or before.get("baselines", [])
    saved.write_text(json.dumps({"walls": walls, "baselines": baselines}, indent=1))
    table = render(args, out, budget, walls, sum(walls.values()), baselines, provenance())
    (out / "reference.md").write_text(table)
    print(table, flush=True)
    print(out / "reference.md", flush=True)
    return 0


def write_dev_labels(exp: Path, cola_dir: Path) -> None:
    """The dev labels per domain, for the majority-class rows (read from the data, not assumed)."""
    from models.data.cola import read_cola_tsv

    raw = cola_dir / "raw"
    labels = {"in-domain": read_cola_tsv(raw / "in_domain_dev.tsv")[1],
              "out-of-domain": read_cola_tsv(raw / "out_of_domain_dev.tsv")[1]}
    labels["dev (all)"] = labels["in-domain"] + labels["out-of-domain"]
    (exp / "dev_labels.json").write_text(json.dumps(labels))


def render(args, out: Path, budget: dict, walls: dict, total_s: float, baselines, prov) -> str:
    # The command as anyone reruns it: the model by file name, no --out / --render-only /
    # --studies (this machine's paths and how the run was split are not part of it).
    cmd = (f"python bench/reference_results.py --model {Path(args.model).name} --data-root "
           f"{args.data_root}" + (" --full" if args.full else ""))
    commits = {}
    for label, d in (("CoLA + LoRA", "ref-cola-lora"), ("distillation", "ref-cola-kd"),
                     ("summarization", "ref-sum-lora")):
        f = out / d / "experiment.json"
        if f.is_file():
            c = json.loads(f.read_text()).get("git_commit", "?")
            commits[label] = c[:7] + (" (uncommitted changes)" if c.endswith("-dirty") else "")
    lines = [f"## Reference results ({'--full' if args.full else 'CPU budget'})", "",
             f"Command: `{cmd}`  ",
             "Commits (as each experiment recorded it): "
             + ", ".join(f"{k} {v}" for k, v in commits.items()) + f"; hardware: {hardware()}  ",
             f"Model: {Path(args.model).name}; wall time {total_s / 60:.1f} min ("
             + ", ".join(f"{k} {v / 60:.1f}" for k, v in walls.items()) + ")", "",
             "Budget: " + "; ".join(f"{k}: " + ", ".join(f"{kk} {vv}" for kk, vv in v.items()
                                                         if vv is not None)
                                    for k, v in budget.items()), ""]
    if (out / "ref-cola-lora" / "retrain_runs.csv").is_file():
        lines += cola_section(out / "ref-cola-lora")
    if (out / "ref-cola-kd" / "comparison.csv").is_file():
        lines += kd_section(out / "ref-cola-kd", Path(args.model).name)
    if baselines or (out / "ref-sum-lora").is_dir():
        lines += sum_section(out, "ref-sum", baselines)
    lines += ["Means ± sample sd over retrain seeds of the best configuration (n = seeds); "
              "selection never saw the reported split."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
