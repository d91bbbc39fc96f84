#!/usr/bin/env python
"""CoLA distillation sweep: a fine-tuned teacher distils into a GRU student (embedding -> GRU
-> linear). A searcher and a scheduler (Optuna TPE + ASHA by default) sweep learning rate,
kd_fraction, kd_temperature, student size and batch size on a held-out slice of the training
set; the best by MCC there are
retrained with seeds and compared on GLUE dev with the same student trained from scratch.

    python search/cola_kd.py --teacher DIR --gpus 4 --with-baseline
    python search/cola_kd.py --teacher DIR --data-dir DIR --no-kd      # the baseline alone
    python search/cola_kd.py --smoke-test                              # tiny teacher, CPU

The teacher runs once, up front, over every sentence; trials receive its logits."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, too

from models.errors import InputError  # noqa: E402
from search.cli import copy_tree, run  # noqa: E402
from search.prepared import Prepared, Variant  # noqa: E402
from search.flags import (KEEP, add_cola_arguments, base_parser, declare,  # noqa: E402
                          load_cola_splits)
from spaces.cola_kd import NO_KD  # noqa: E402
from spaces.dims import Fixed  # noqa: E402

STUDY = "cola_kd"
SCRATCH = "-scratch"


def parser():
    p = base_parser("cola_kd.py", __doc__.split("\n\n")[0])
    g = p.add_argument_group("CoLA distillation")
    g.add_argument("--teacher", default=None,
                   help="a LoRA retrain output (adapter + base model) or any saved 2-label "
                        "sequence classifier (required unless --smoke-test)")
    g.add_argument("--tokenizer", default=None,
                   help="tokenizer directory, when the teacher's own cannot be loaded; its "
                        "vocabulary must be the teacher's")
    add_cola_arguments(g)
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--no-kd", action="store_true",
                      help="the scratch baseline alone: the same space with kd_fraction = 1")
    mode.add_argument("--with-baseline", action="store_true",
                      help="run the distillation sweep and the scratch sweep, same budget")
    declare(p, teacher=KEEP, tokenizer=KEEP, no_kd=KEEP, with_baseline=KEEP)
    p.set_defaults(gpus_per_trial=0.25)  # small students share a GPU
    return p


def variants(args) -> dict:
    kd, scratch = Variant(STUDY, {}), Variant(STUDY, NO_KD)
    if args.no_kd:
        return {"": scratch}
    return {"": kd, SCRATCH: scratch} if args.with_baseline else {"": kd}


def smoke_teacher(splits, out: Path, seed: int) -> str:
    """A tiny GPT-2 classifier, fine-tuned for a few epochs with the shared loop, merged and
    saved as a plain 2-label classifier directory."""
    import torch

    from models.data.classification import tokenize_splits
    from models.cola_lora import ColaLoraConfig, setup
    from models.hf import load_tokenizer
    from models.loop import build_optimizer, train_loop
    from models.tiny import build_tiny_gpt2

    base = build_tiny_gpt2(out / "base", splits.train_text + splits.dev_text, seed=seed)
    tok = load_tokenizer(base)
    data = tokenize_splits(splits, tok, selection_fraction=0.1, seed=seed)
    torch.manual_seed(seed)
    cfg = ColaLoraConfig(model=base, learning_rate=5e-3, lora_r=8, lora_alpha=16, max_epochs=4,
                         batch_size=16, stage="retrain")
    s = setup(cfg, data, "cpu")
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                 total_steps=s.steps_per_epoch * cfg.max_epochs, warmup_ratio=0.06)
    train_loop(model=s.model, optimizer=opt, scheduler=sched, loss_fn=s.loss_fn,
               train_batches=s.train_batches, evaluate=s.evaluate, max_epochs=cfg.max_epochs,
               best_metric=s.best_metric, report=lambda m, st: None)
    teacher = out / "teacher"
    s.model.merge_and_unload().save_pretrained(teacher)
    tok.save_pretrained(teacher)
    return str(teacher)


def student_vocabulary(args, model, tokenizer, teacher_dir: str):
    """-> (tokenizer, vocabulary size) the student reads: the teacher's own."""
    from models.hf import load_tokenizer

    if args.tokenizer:
        own = tokenizer
        tokenizer = load_tokenizer(args.tokenizer, flag="--tokenizer")
        if tokenizer.get_vocab() != own.get_vocab():
            raise InputError(f"--tokenizer {args.tokenizer!r}: its vocabulary ({len(tokenizer)} "
                             f"tokens) is not the teacher's ({len(own)} tokens); the student "
                             "must read the teacher's token ids")
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise InputError(f"--teacher {teacher_dir!r}: tokenizer has {len(tokenizer)} tokens but the "
                         f"teacher's embedding only {vocab}; the student vocabulary would not match")
    return tokenizer, vocab


def prepare(args, scratch: Path, exp_dir: Path) -> Prepared:
    """The study's data and model, loaded and checked before anything is written (smoke-test
    artefacts go to ``scratch``), and what the plan prints. Long (60-80 lines) but one
    sequence: each check needs what the one before it loaded."""
    import torch

    from models.data.classification import tokenize_splits
    from models.cola_kd import KDData
    from models.metrics import classification_metrics
    from models.teacher import load_teacher, teacher_logits
    from search.memory import GIB, Estimate

    if args.teacher is None and not args.smoke_test:
        raise InputError("--teacher is required (a LoRA retrain output or a saved classifier)")
    if args.teacher is not None:  # checked before the data: the cheaper mistake to find first
        model, tokenizer, info = load_teacher(args.teacher)
        student_vocabulary(args, model, tokenizer, args.teacher)
    splits = load_cola_splits(args)
    finalize = None
    teacher_dir = args.teacher
    if teacher_dir is None:  # --smoke-test: a tiny teacher fine-tuned here
        final = exp_dir / "smoke-teacher"
        if (final / "teacher").is_dir():
            teacher_dir = str(final / "teacher")
            model, tokenizer, info = load_teacher(teacher_dir)
        else:
            smoke_teacher(splits, scratch / "smoke-teacher", args.seed)
            model, tokenizer, info = load_teacher(str(scratch / "smoke-teacher" / "teacher"))
            # where it will live once validation passed
            teacher_dir = str(final / "teacher")
            finalize = lambda d: copy_tree(scratch / "smoke-teacher", d / "smoke-teacher")  # noqa: E731
    tokenizer, vocab = student_vocabulary(args, model, tokenizer, teacher_dir)

    data = tokenize_splits(splits, tokenizer, selection_fraction=args.selection_fraction,
                         seed=args.seed, max_length=args.max_length,
                         max_train_samples=args.max_train_samples)
    device = "cuda" if args.gpus and torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    # One pass over train + dev, never repeated: trials get these arrays.
    both, rate = teacher_logits(model, data.train_ids + data.dev_ids, pad_id=data.pad_token_id,
                                device=device)
    teacher_s = time.perf_counter() - t0
    n = len(data.train_ids)
    kd = KDData(cola=data, teacher_train=both[:n], teacher_dev=both[n:], vocab_size=vocab)
    metrics = {}
    for split in ["select", *data.dev_splits()]:
        _, labels = data.split(split)
        for k, v in classification_metrics(labels, kd.teacher_logits(split).argmax(-1)).items():
            metrics[f"{split}_{k}"] = v
    # The table's CPU throughput of every model (teacher and students) comes from one routine,
    # on the same dev batches, after a warm-up pass (the logits pass above is not comparable).
    cpu_rate = cpu_throughput(model.cpu(), data.dev_ids, data.pad_token_id)
    if device != "cpu":
        torch.cuda.empty_cache()
    kd.teacher = {**info, "dir": teacher_dir, **metrics, "cpu_sentences_per_s": cpu_rate}
    del model
    return Prepared(
        data=kd,
        fixed={"model": teacher_dir},
        describe={
            "teacher": f"{teacher_dir} ({info['kind']}, {info['params']:,} params); logits for "
                       f"{len(both)} sentences in {teacher_s:.1f} s on {device}",
            # A teacher from the LoRA retrain trained on the whole training set, selection slice
            # included: its selection figures are then training-set figures.
            "teacher metrics": f"selection acc {metrics['select_accuracy']:.3f} MCC "
                               f"{metrics['select_mcc']:.3f}; dev acc {metrics['dev_accuracy']:.3f} "
                               f"MCC {metrics['dev_mcc']:.3f}",
            "data": data.origin,
            "rows": f"{data.meta['fit_rows']} fit / {data.meta['select_rows']} selection / "
                    f"{data.meta['dev_rows']} dev (retrains only)",
            "student vocabulary": f"{vocab} (the teacher's)",
        },
        finalize=finalize,
        extra={"majority_baseline": data.majority_baseline()},
        report_split=(None if not data.origin.startswith("generated") else
                      f"the generated dev set ({data.meta['dev_rows']} sentences; not GLUE dev)"),
        train_rows=int(data.meta["fit_rows"]),
        # The student (an embedding and a GRU, a few MB) is small beside its worker process.
        memory=lambda *_: Estimate(int(1.0 * GIB), "the worker process (~0.8 GiB) and a GRU "
                                   "student of a few MB"),
        after=lambda outcomes: compare(outcomes, kd),
        trainable=lambda _, space: student_params(space, vocab),
    )


def student_params(space: dict, vocab: int) -> int:
    """The largest student the space can draw (every parameter of it trains), counted on an
    empty (meta) model."""
    import torch

    from models.student import GRUStudent

    top = {k: max(space[k].edges()) for k in ("embed_dim", "hidden_size", "num_layers")}
    with torch.device("meta"):
        m = GRUStudent(vocab_size=vocab, bidirectional=True, **{k: int(v) for k, v in top.items()})
    return sum(p.numel() for p in m.parameters())


def _student_row(label: str, plan, summary) -> tuple[dict, object]:
    """Best configuration (rank 1) of one sweep's retrain, mean ± sd over seeds, and one of
    its retrained students (for timing)."""
    import pandas as pd

    from models.cola_kd import WEIGHTS, load_student

    runs = pd.read_csv(plan.exp_dir / "retrain_runs.csv")
    best = runs[runs["rank"] == 1]
    top = summary[summary["rank"] == 1].iloc[0]
    model_dir = plan.exp_dir / "retrained" / best["job"].iloc[0]
    row = {"model": label, "n_seeds": int(top["n_seeds"]),
           "dev_accuracy_mean": top["dev_accuracy_mean"], "dev_accuracy_sd": top["dev_accuracy_sd"],
           "dev_mcc_mean": top["dev_mcc_mean"], "dev_mcc_sd": top["dev_mcc_sd"],
           "params": int(best["trainable_params"].iloc[0]),
           "size_mb": (model_dir / WEIGHTS).stat().st_size / 1e6,
           "agreement": float(best["dev_agreement"].mean())}
    return row, load_student(model_dir)


def cpu_throughput(model, ids, pad_id: int, batch_size: int = 64) -> float:
    """Sentences per second on the CPU over ``ids``, after one warm-up pass (the first pass
    through a fresh model pays one-off allocation costs)."""
    import numpy as np
    import torch

    from models.data.batching import classification_batches

    def one_pass():
        for b in classification_batches(ids, np.zeros(len(ids)), batch_size=batch_size, pad_id=pad_id):
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    with torch.inference_mode():
        one_pass()
        t0 = time.perf_counter()
        one_pass()
        return len(ids) / (time.perf_counter() - t0)


def compare(outcomes, kd) -> None:
    """One table: teacher, best KD student, best scratch student on GLUE dev (each student
    loaded and timed on the CPU here; the table is results.comparison's)."""
    from results.comparison import distillation_table

    t = kd.teacher
    rows = [{"model": f"teacher ({t['kind']})", "n_seeds": 1,
             "dev_accuracy_mean": t["dev_accuracy"], "dev_accuracy_sd": float("nan"),
             "dev_mcc_mean": t["dev_mcc"], "dev_mcc_sd": float("nan"),
             "params": t["params"], "size_mb": t["size_bytes"] / 1e6,
             "cpu_sentences_per_s": t["cpu_sentences_per_s"], "agreement": 1.0}]
    dev_ids = kd.cola.dev_ids
    for plan, summary in outcomes:
        if summary is None or summary.empty:
            continue
        label = "scratch student" if plan.fixed.get("kd_fraction") == 1.0 or \
            isinstance(plan.space.get("kd_fraction"), Fixed) else "KD student"
        row, student = _student_row(label, plan, summary)
        row["cpu_sentences_per_s"] = cpu_throughput(student, dev_ids, kd.cola.pad_token_id)
        rows.append(row)
    split = ("the generated dev set" if kd.cola.origin.startswith("generated") else "GLUE dev")
    distillation_table(rows, outcomes[0][0].exp_dir, split=split)


def main(argv=None) -> int:
    return run(STUDY, argv, parser(), prepare, variants)


if __name__ == "__main__":
    sys.exit(main())
