#!/usr/bin/env python
"""How many operator calls one CoLA + LoRA training step dispatches (forward, backward,
clipping, AdamW), counted with torch's profiler on the CPU. On a GPU nearly every
non-view operator is a kernel launch, so this count bounds how fast a small-batch step can be
when launches, not arithmetic, set the pace (README, "On a GPU").

    python bench/step_ops.py --model FILE.gguf|HF_DIR --data-dir <CoLA dir> [--batch-size 32]

Last line: the operator calls of one step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# Operators that only re-describe memory (no kernel on a GPU).
VIEWS = {"aten::as_strided", "aten::transpose", "aten::t", "aten::view", "aten::reshape",
         "aten::resolve_conj", "aten::resolve_neg", "aten::expand", "aten::slice",
         "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::permute", "aten::detach",
         "aten::alias", "aten::empty", "aten::empty_strided", "aten::_unsafe_view",
         "aten::split", "aten::chunk", "aten::narrow", "aten::contiguous", "aten::to",
         "aten::_to_copy", "aten::lift_fresh"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="GGUF file or local HF model directory")
    p.add_argument("--data-dir", required=True, help="CoLA directory (cola_public)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=4)
    args = p.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from models.cola_lora import ColaLoraConfig, setup
    from models.data.classification import tokenize_splits
    from models.data.cola import load_cola_dir
    from models.errors import InputError
    from models.hf import load_tokenizer, resolve_model
    from models.loop import _step, build_optimizer
    from search.output import quiet_libraries

    quiet_libraries()
    try:
        model = resolve_model(args.model)
        splits = load_cola_dir(args.data_dir)
    except InputError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    data = tokenize_splits(splits, load_tokenizer(model), selection_fraction=0.1, seed=0,
                           max_train_samples=20 * args.batch_size)
    cfg = ColaLoraConfig(model=model, batch_size=args.batch_size, lora_r=args.lora_r,
                         lora_alpha=4 * args.lora_r, stage="retrain")
    s = setup(cfg, data, torch.device("cpu"))
    params = [q for q in s.model.parameters() if q.requires_grad]
    opt, sched = build_optimizer(s.model, learning_rate=1e-3, weight_decay=0.0,
                                 total_steps=10, warmup_ratio=0.0)
    batches = iter(s.train_batches(1))

    def step():
        loss, _ = s.loss_fn(s.model, next(batches))
        loss.backward()
        _step(params, opt, sched, 1.0)

    step()  # warm-up: lazy initialisations stay out of the count
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    calls = sum(e.count for e in events)
    compute = sum(e.count for e in events if e.key not in VIEWS)
    print(f"model {Path(args.model).name}, LoRA r {args.lora_r}, batch {args.batch_size}: one training step")
    for e in sorted(events, key=lambda e: -e.count)[:10]:
        print(f"  {e.key:<28} {e.count:>6}")
    print(f"operator calls {calls:,}, of which not views or dtype casts {compute:,} "
          f"(matrix products {sum(e.count for e in events if e.key in ('aten::mm', 'aten::addmm', 'aten::bmm')):,})")
    print(calls)


if __name__ == "__main__":
    main()
