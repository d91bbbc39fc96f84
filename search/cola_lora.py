#!/usr/bin/env python
"""CoLA + LoRA sweep: GPT-2 (or any HF model with a sequence-classification head) fine-tuned
with peft LoRA (or another adapter method, --method) on CoLA; a searcher proposes (Optuna TPE by default), a scheduler stops weak
trials (ASHA by default), ranking them on a held-out slice of the training set; the best
configurations by MCC there are retrained with several seeds and reported on GLUE dev
(accuracy and MCC, in-domain and out-of-domain apart).

    python search/cola_lora.py --gpus 4                       # hub gpt2 + hub GLUE CoLA
    python search/cola_lora.py --data-dir DIR --model PATH    # offline
    python search/cola_lora.py --smoke-test                   # tiny model, no data, CPU
    python search/cola_lora.py --method ia3 --smoke-test      # another adapter method
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, too

from models.errors import InputError  # noqa: E402
from models.registry import adapter_methods, get_study  # noqa: E402
from search.cli import copy_tree, run  # noqa: E402
from search.prepared import Prepared  # noqa: E402
from search.flags import (KEEP, add_cola_arguments, base_parser, declare,  # noqa: E402
                          load_cola_splits)

STUDY = "cola_lora"


def parser():
    p = base_parser("cola_lora.py", __doc__.split("\n\n")[0])
    g = p.add_argument_group("CoLA + LoRA")
    g.add_argument("--method", choices=adapter_methods(), default="lora",
                   help="the adapter method (each has its own search space in spaces/; the "
                        "experiment is named cola_<method> unless --name says otherwise)")
    g.add_argument("--model", default=None,
                   help="hub id (gpt2, gpt2-medium, ...) or a local model directory "
                        "(default gpt2; a tiny in-process GPT-2 with --smoke-test)")
    g.add_argument("--target-modules", nargs="+", default=None, metavar="NAME",
                   help="modules LoRA adapts (e.g. query value, or all-linear); default: every "
                        "attention and MLP projection of GPT-2 (c_attn c_proj c_fc) and "
                        "Llama-style models (q/k/v/o, gate/up/down), peft's own default otherwise")
    add_cola_arguments(g)
    declare(p, method=KEEP, model=KEEP, target_modules=KEEP)
    return p


def prepare(args, scratch: Path, exp_dir: Path) -> Prepared:
    """The study's data and model, loaded and checked before anything is written (smoke-test
    artefacts go to ``scratch``), and what the plan prints. Long (60-80 lines) but one
    sequence: each check needs what the one before it loaded."""
    from models.data.classification import tokenize_splits
    from models.hf import load_tokenizer, resolve_model
    from models.tiny import build_tiny_gpt2
    from search.memory import estimate, largest, model_shape, packed_estimate

    study = get_study(f"cola_{args.method}")
    splits = load_cola_splits(args)
    if args.smoke_test:  # the study's smoke overrides, unless --space names the same dimension
        args.space = study.smoke_overrides(args.space) + args.space
    finalize = None
    if args.smoke_test and args.model is None:
        final = exp_dir / "smoke-model"
        if final.is_dir():  # resuming: the same tiny model again
            model = str(final)
        else:
            build_tiny_gpt2(scratch / "smoke-model", splits.train_text + splits.dev_text, seed=args.seed)
            model = str(final)
            finalize = lambda d: copy_tree(scratch / "smoke-model", d / "smoke-model")  # noqa: E731
        tok_dir = str(final) if final.is_dir() else str(scratch / "smoke-model")
    else:
        model = tok_dir = resolve_model(args.model or "gpt2")
    tokenizer = load_tokenizer(tok_dir)
    data = tokenize_splits(splits, tokenizer, selection_fraction=args.selection_fraction,
                         seed=args.seed, max_length=args.max_length,
                         max_train_samples=args.max_train_samples)
    targets = tuple(args.target_modules) if args.target_modules else None

    # Check the adapter targets and count parameters on an empty (meta-device) model.
    counts = {}
    sizes = ([None] if study.size_dim is None else
             sorted({int(v) for v in study.space[study.size_dim].edges()}))
    try:
        for v in sizes:
            cfg = study.config_cls(model=tok_dir, target_modules=targets,
                                   **({study.size_dim: v} if v is not None else {}))
            m = study.build_model(cfg, pad_token_id=data.pad_token_id, meta=True)
            trainable, total = m.get_nb_trainable_parameters()
            counts[v] = (trainable, total)
    except ValueError as e:
        raise InputError(f"--target-modules {' '.join(args.target_modules or ['(default)'])}: "
                         f"{str(e).splitlines()[0]}") from None
    return Prepared(
        data=data,
        fixed={"model": model, "target_modules": targets},
        model_while_planning=tok_dir,
        describe={
            "model": model, "data": data.origin,
            "rows": f"{data.meta['fit_rows']} fit / {data.meta['select_rows']} selection "
                    f"(trials are scored here) / {data.meta['dev_rows']} dev (retrains only)",
            "method": study.name.removeprefix("cola_"),
            "trainable params": ", ".join(
                (f"{study.size_dim}={v}: " if v is not None else "") + f"{t:,} of {tot:,}"
                for v, (t, tot) in counts.items()),
        },
        finalize=finalize,
        extra={"majority_baseline": data.majority_baseline()},
        report_split=(None if not data.origin.startswith("generated") else
                      f"the generated dev set ({data.meta['dev_rows']} sentences; not GLUE dev)"),
        train_rows=int(data.meta["fit_rows"]),
        trainable=lambda *_: max(t for t, _ in counts.values()),
        memory=lambda study, space, fixed: estimate(
            total_params=max(t for _, t in counts.values()),
            trainable_params=max(t for t, _ in counts.values()),
            batch_size=largest(space, fixed, "batch_size", 32),
            tokens=max(len(x) for x in data.train_ids),  # batches pad to their longest
            **model_shape(tok_dir)),
        packed_memory=lambda study, space, fixed, k: packed_estimate(
            k=k, total_params=min(tot - t for t, tot in counts.values()),
            slot_params=max(t for t, _ in counts.values()),
            batch_size=largest(space, fixed, "batch_size", 32),
            tokens=max(len(x) for x in data.train_ids), **model_shape(tok_dir)),
    )


def main(argv=None) -> int:
    # The method names the study (and, by default, the experiment): read it first. A bad value
    # is argparse's exit 2, naming --method and its choices.
    method = parser().parse_known_args(argv)[0].method
    return run(f"cola_{method}", argv, parser(), prepare)


if __name__ == "__main__":
    sys.exit(main())
