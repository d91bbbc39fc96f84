#!/usr/bin/env python
"""CNN/DailyMail summarization sweep: GPT-2 adapted by soft-prompt tuning, LoRA, or training
only its last blocks. A searcher and a scheduler (Optuna TPE + ASHA by default) sweep each
method on the validation split's eval loss (summary tokens only); the best configuration of
each method is retrained with seeds, stopped early on validation loss and reported on the
test split: eval loss, ROUGE-1/2/L of greedy summaries, trainable parameters, time per epoch,
peak memory. ``--method all`` compares the three in one table and one bar chart per metric.

    python search/cnndm_summarize.py --method all --gpus 4                  # hub gpt2 + hub data
    python search/cnndm_summarize.py --method lora --data-dir DIR --model PATH  # offline
    python search/cnndm_summarize.py --smoke-test                           # tiny model, CPU
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, too

from models.data.cnndm import SEPARATOR  # noqa: E402
from models.errors import InputError  # noqa: E402
from models.registry import get_study, summarization_methods  # noqa: E402
from search.cli import copy_tree, run  # noqa: E402
from search.prepared import Prepared, Variant  # noqa: E402
from search.flags import (FREE, KEEP, apply_space_overrides, base_parser, declare,  # noqa: E402
                          fraction, nonneg_int, positive_int, set_study_defaults)

NAME = "cnndm"
METHODS = summarization_methods()  # --method name -> study (models.registry)
# A method whose space has this dimension puts that many positions before the article.
VIRTUAL = "num_virtual_tokens"
TOKENS = {"max_source_tokens": 512, "max_target_tokens": 128, "rouge_samples": 100}
SMOKE_TOKENS = {"max_source_tokens": 96, "max_target_tokens": 24, "rouge_samples": 8}


def parser():
    from models.summarize_prompt import DEFAULT_INIT_TEXT

    p = base_parser("cnndm_summarize.py", __doc__.split("\n\n")[0])
    set_study_defaults(p, {"num_samples": 12, "max_epochs": 10, "retrain_top_k": 1,
                           "retrain_seeds": 3},
                       {"num_samples": 4, "max_epochs": 2, "retrain_top_k": 1, "retrain_seeds": 1})
    g = p.add_argument_group("summarization")
    g.add_argument("--method", choices=[*METHODS, "all"], default="all",
                   help="adaptation to sweep; all: one sweep each, then a comparison")
    g.add_argument("--model", default=None,
                   help="hub id (gpt2, gpt2-medium, ...) or a local causal-LM directory "
                        "(default gpt2; a tiny in-process GPT-2 with --smoke-test)")
    g.add_argument("--data-dir", default=None,
                   help="Kaggle CSV export: train.csv, validation.csv, test.csv (columns id, "
                        "article, highlights), or one CSV (or a directory with one) split "
                        "80/10/10; default: the hub's cnn_dailymail 3.0.0 (a generated set "
                        "with --smoke-test)")
    g.add_argument("--max-source-tokens", type=positive_int, default=None,
                   help="article tokens kept (default 512; 96 with --smoke-test)")
    g.add_argument("--max-target-tokens", type=positive_int, default=None,
                   help="summary tokens kept (default 128; 24 with --smoke-test)")
    g.add_argument("--separator", default=SEPARATOR,
                   help="text between article and summary (the summary follows after a space; "
                        "the separator's trailing spaces are dropped)")
    g.add_argument("--max-eval-samples", type=positive_int, default=None,
                   help="seeded subset of the validation and test splits (quick runs)")
    g.add_argument("--rouge-samples", type=nonneg_int, default=None,
                   help="test articles summarised for ROUGE after each retrain "
                        "(default 100; 8 with --smoke-test)")
    g.add_argument("--max-empty-fraction", type=fraction, default=0.01,
                   help="share of rows with an empty article or summary that is dropped "
                        "silently; more is an error")
    g.add_argument("--batch-size", type=positive_int, default=8, help="examples per micro-batch")
    g.add_argument("--grad-accum", type=positive_int, default=1,
                   help="micro-batches per optimizer step")
    g.add_argument("--patience", type=positive_int, default=2,
                   help="stop a trial after this many epochs without a better eval loss")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory per trial, "
                        "more time per step")
    g = p.add_argument_group("decoding of the retrained models' test summaries (ROUGE)")
    g.add_argument("--num-beams", type=positive_int, default=4, help="beam search width (1: greedy)")
    g.add_argument("--no-repeat-ngram-size", type=nonneg_int, default=3,
                   help="no n-gram of this size twice in a summary (0: allowed)")
    g.add_argument("--min-summary-tokens", type=nonneg_int, default=8,
                   help="new tokens before EOS may end a summary (the maximum is "
                        "--max-target-tokens)")
    g = p.add_argument_group("methods")
    g.add_argument("--prompt-init-text", default=DEFAULT_INIT_TEXT,
                   help="prompt: text whose embeddings initialise the soft prompt")
    g.add_argument("--target-modules", nargs="+", default=None, metavar="NAME",
                   help="lora: modules to adapt (default: every attention and MLP projection "
                        "of GPT-2 and Llama-style models; peft's own default otherwise)")
    declare(p, method=KEEP, model=KEEP, data_dir=KEEP, max_source_tokens=KEEP,
            max_target_tokens=KEEP, separator=KEEP, max_eval_samples=KEEP,
            rouge_samples=KEEP, max_empty_fraction=KEEP, batch_size=KEEP, grad_accum=KEEP,
            patience=KEEP, num_beams=KEEP, no_repeat_ngram_size=KEEP,
            min_summary_tokens=KEEP, prompt_init_text=KEEP, target_modules=KEEP,
            # the same gradients, recomputed: how it runs, not what it computes
            gradient_checkpointing=FREE)
    return p


def chosen_methods(args) -> list[str]:
    return list(METHODS) if args.method == "all" else [args.method]


def variants(args) -> dict:
    out = {}
    for method in chosen_methods(args):
        overrides = {}
        if args.smoke_test:  # the study's smoke-test dimensions, unless --space says otherwise
            study = get_study(METHODS[method])
            mine = study.smoke_overrides(args.space)
            smoke = apply_space_overrides(study.space, mine, set(study.space))
            overrides = {x.split("=", 1)[0]: smoke[x.split("=", 1)[0]] for x in mine}
        out[f"-{method}"] = Variant(METHODS[method], overrides)
    return out


def _largest(space: dict, name: str, default: int) -> int:
    dim = space.get(name)
    return int(max(dim.edges())) if dim is not None else default


def check_model_fits(args, model_dir: str, sep_tokens: int) -> tuple[dict, dict]:
    """Context length, block count and adapter targets against the model, before any work.
    Returns trainable-parameter counts per method for the plan (text), and per method the
    largest trainable count and the total (for the memory estimate)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    context = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    counts, sizes = {}, {}
    all_dims = set().union(*(get_study(METHODS[m]).space for m in METHODS))
    for method in chosen_methods(args):
        study = get_study(METHODS[method])
        space = {**apply_space_overrides(study.space, args.space, set(study.space),
                                         skip=all_dims),
                 **variants(args)[f"-{method}"].overrides}
        virtual = _largest(space, VIRTUAL, 0)
        need = args.max_source_tokens + sep_tokens + args.max_target_tokens + 1 + virtual
        if context is not None and need > context:
            extra = f" + up to {virtual} virtual tokens ({method})" if virtual else ""
            raise InputError(
                f"--max-source-tokens {args.max_source_tokens} + separator {sep_tokens} + "
                f"--max-target-tokens {args.max_target_tokens} + EOS 1{extra} = {need} tokens, "
                f"longer than the model's context of {context}; lower the token limits")
        counts[method], sizes[method] = _count(study, space, model_dir, cfg, args)
    return counts, sizes


def _count(study, space, model_dir, cfg, args) -> tuple[str, tuple[int, int]]:
    """Trainable parameters at the space's extremes (the method's ``trainable_counts``), of
    the total, on empty (meta) models: -> (text, (largest trainable, total))."""
    import torch
    from transformers import AutoModelForCausalLM

    from models.hf import count_parameters

    def meta():
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)

    counts = study.trainable_counts(
        space, meta, model_dir=model_dir, hidden_size=cfg.hidden_size,
        target_modules=tuple(args.target_modules) if args.target_modules else None)
    total = count_parameters(meta())["total_params"]
    return (", ".join(f"{label}: {n:,}" for label, n in counts) + f" of {total:,}",
            (max(n for _, n in counts), total))


def _memory(args, model_dir, sep_tokens, sizes, study, space, fixed):
    """A trial's peak memory (search.memory): the largest batch (the memory plan asks again
    with ``fixed`` holding a micro-batch as batch_size, and gradient checkpointing), the
    longest example, the LM head over the summary positions only
    (models.summarize.summary_loss)."""
    from search.memory import estimate, largest, model_shape

    method = next(m for m, s in METHODS.items() if s == study)
    virtual = largest(space, fixed, VIRTUAL, 0)
    most, total = sizes[method]
    return estimate(total_params=total, trainable_params=most,
                    batch_size=largest(space, fixed, "batch_size", args.batch_size),
                    tokens=args.max_source_tokens + sep_tokens + args.max_target_tokens + 1
                    + virtual, loss_positions=args.max_target_tokens + 2,
                    checkpointing=bool(fixed.get("gradient_checkpointing")),
                    **model_shape(model_dir))


def prepare(args, scratch: Path, exp_dir: Path) -> Prepared:
    """The study's data and model, loaded and checked before anything is written (smoke-test
    artefacts go to ``scratch``), and what the plan prints. Long (60-80 lines) but one
    sequence: each check needs what the one before it loaded."""
    from models.data.cnndm import (load_cnndm_dir, load_cnndm_hub, separator_ids,
                                   synthetic_articles, tokenize_articles)
    from models.hf import load_tokenizer, resolve_model
    from models.tiny import build_tiny_gpt2, pretrain_tiny_lm

    for k, v in (SMOKE_TOKENS if args.smoke_test else TOKENS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not args.prompt_init_text.strip():
        raise InputError("--prompt-init-text: must not be empty")
    if not args.separator.strip():
        raise InputError(f"--separator {args.separator!r}: must hold more than spaces (the "
                         "text the model reads between article and summary)")
    if args.data_dir:
        articles = load_cnndm_dir(args.data_dir, seed=args.seed,
                                  max_empty_fraction=args.max_empty_fraction)
    else:
        articles = synthetic_articles(seed=args.seed) if args.smoke_test else load_cnndm_hub()
    finalize = pretrain = None
    if args.smoke_test and args.model is None:
        final = exp_dir / "smoke-model"
        if final.is_dir():  # resuming: the same tiny model again
            tok_dir = str(final)
        else:
            texts = [t for pair in articles.train for t in pair]
            build_tiny_gpt2(scratch / "smoke-model", texts + [args.separator] * 20,
                            vocab_size=600, n_embd=64, seed=args.seed)
            tok_dir = str(scratch / "smoke-model")
            # Pretrained on the training articles only (their summaries are the task), once
            # the checks below have passed.
            pretrain = lambda: pretrain_tiny_lm(tok_dir, [a for a, _ in articles.train],  # noqa: E731
                                                seed=args.seed)
            finalize = lambda d: copy_tree(scratch / "smoke-model", d / "smoke-model")  # noqa: E731
        model = str(final)
    else:
        model = tok_dir = resolve_model(args.model or "gpt2")
    tokenizer = load_tokenizer(tok_dir)
    sep_tokens = len(separator_ids(tokenizer, args.separator))
    counts, sizes = check_model_fits(args, tok_dir, sep_tokens)
    if pretrain:
        pretrain()
    data = tokenize_articles(articles, tokenizer, separator=args.separator,
                             max_source_tokens=args.max_source_tokens,
                             max_target_tokens=args.max_target_tokens,
                             max_train_samples=args.max_train_samples,
                             max_eval_samples=args.max_eval_samples,
                             rouge_samples=args.rouge_samples, seed=args.seed)
    m = data.meta
    return Prepared(
        data=data,
        fixed={"model": model, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
               "patience": args.patience, "prompt_init_text": args.prompt_init_text,
               "gradient_checkpointing": args.gradient_checkpointing,
               "num_beams": args.num_beams, "no_repeat_ngram_size": args.no_repeat_ngram_size,
               "min_summary_tokens": args.min_summary_tokens,
               "target_modules": tuple(args.target_modules) if args.target_modules else None},
        describe={
            "model": model, "data": data.origin,
            "rows": f"{m['train_rows']} train / {m['validation_rows']} validation (trials are "
                    f"scored here) / {m['test_rows']} test (retrains only); "
                    f"{m['dropped_empty_rows']} empty rows dropped",
            "format": f"article <= {args.max_source_tokens} tokens + {args.separator!r} + "
                      f"summary <= {args.max_target_tokens} tokens + EOS (mean "
                      f"{m['mean_tokens']:.0f} tokens); loss on summary tokens only",
            "training": f"batch {args.batch_size} x {args.grad_accum} accumulation, patience "
                        f"{args.patience}"
                        + (", gradient checkpointing" if args.gradient_checkpointing else ""),
            "ROUGE": f"{len(data.references)} test articles, beam {args.num_beams}, no repeated "
                     f"{args.no_repeat_ngram_size}-gram, {args.min_summary_tokens}.."
                     f"{args.max_target_tokens} tokens; summaries saved with each retrain",
            **{f"trainable params ({k})": v for k, v in counts.items()},
        },
        finalize=finalize,
        after=lambda outcomes: (compare(outcomes, exp_dir, n_articles=len(data.references))
                                if len(outcomes) > 1 else None),
        memory=lambda study, space, fixed: _memory(args, tok_dir, sep_tokens, sizes, study,
                                                   space, fixed),
        trainable=lambda study, _: sizes[next(m for m, s in METHODS.items() if s == study)][0],
    )


# Comparison columns: (retrain column, label, higher is better)
COMPARE = (("test_loss", "test eval loss", False), ("test_rouge1", "ROUGE-1", True),
           ("test_rouge2", "ROUGE-2", True), ("test_rougeL", "ROUGE-L", True),
           ("trainable_params", "trainable parameters", None),
           ("mean_train_s", "seconds per training epoch", False),
           ("max_train_mem_mb", "memory training adds (MiB)", False),
           ("max_peak_mem_mb", "peak memory (MiB)", False))


def compare(outcomes, out_dir: Path, *, n_articles: int | None = None) -> None:
    """The methods side by side on the test split (results.comparison.compare_methods)."""
    from results.comparison import compare_methods

    method_of = {study: m for m, study in METHODS.items()}
    compare_methods([(method_of[plan.study.name], plan.exp_dir, list(plan.space))
                     for plan, _ in outcomes], out_dir, columns=COMPARE, n_articles=n_articles)


def main(argv=None) -> int:
    return run(NAME, argv, parser(), prepare, variants)


if __name__ == "__main__":
    sys.exit(main())
