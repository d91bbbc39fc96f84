#!/usr/bin/env python
"""Peak memory of one summarization trial process, measured side by side: the LM head over
every position (``model(**batch).loss``) against the head over the summary positions only
(``models.summarize.summary_loss``, what trials use), and that with gradient checkpointing;
each beside the planner's estimate (``search.memory``).

Each variant runs in a fresh process (peak RSS = ``ru_maxrss``): load the model, build the
method, train ``--steps`` steps on the longest batches of real CNN/DM articles.

    python bench/summarize_memory.py --model FILE.gguf|DIR --data-dir ../shared/data/cnn_dailymail

Last line: the peak of the summary-head variant as a share of the full-head one."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {"full head": ("full", False), "summary head": ("summary", False),
            "summary head + checkpointing": ("summary", True)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory or GGUF file")
    p.add_argument("--data-dir", required=True, help="CNN/DM CSV (or a directory with one)")
    p.add_argument("--method", default="lora", choices=["lora", "prompt", "last-layers"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-source-tokens", type=int, default=384)
    p.add_argument("--max-target-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> None:
    """One variant: train, print {"peak_mib": ..., "estimate_mib": ...} as the last line."""
    import resource

    import torch

    from models.data.cnndm import SEPARATOR, load_cnndm_dir, lm_batches, tokenize_articles
    from models.hf import count_parameters, load_tokenizer
    from models.summarize import summary_loss
    from search.memory import estimate, model_shape

    head, ckpt = VARIANTS[args.child]
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    data = tokenize_articles(load_cnndm_dir(args.data_dir, seed=0), tok, separator=SEPARATOR,
                             max_source_tokens=args.max_source_tokens,
                             max_target_tokens=args.max_target_tokens, rouge_samples=0, seed=0)
    if args.method == "lora":
        from models.summarize_lora import SumLoraConfig as C, build_model
    elif args.method == "prompt":
        from models.summarize_prompt import SumPromptConfig as C, build_model
    else:
        from models.summarize_last_layers import SumLastLayersConfig as C, build_model
    model = build_model(C(model=args.model), data)
    if ckpt:
        getattr(model, "get_base_model", lambda: model)().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    longest = sorted(data.train, key=lambda e: -len(e.input_ids))[: args.batch_size * args.steps]
    tokens = 0
    for batch in lm_batches(longest, batch_size=args.batch_size, pad_id=data.pad_token_id):
        tokens = max(tokens, batch["input_ids"].shape[1])
        loss = model(**batch).loss if head == "full" else summary_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    counts = count_parameters(model)
    est = estimate(total_params=counts["total_params"], trainable_params=counts["trainable_params"],
                   batch_size=args.batch_size, tokens=tokens,
                   loss_positions=tokens if head == "full" else args.max_target_tokens + 2,
                   checkpointing=ckpt, **model_shape(args.model))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_mib": peak_kib / 1024, "estimate_mib": est.bytes / 2**20,
                      "tokens": tokens}))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    from models.hf import resolve_model

    args.model = resolve_model(args.model)
    print(f"{args.method} on {args.model}: batch {args.batch_size}, articles <= "
          f"{args.max_source_tokens} tokens, summaries <= {args.max_target_tokens}, "
          f"{args.steps} steps on the longest batches, {args.threads} threads", flush=True)
    out = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--child", name, "--model", args.model,
               "--data-dir", args.data_dir, "--method", args.method,
               "--batch-size", str(args.batch_size), "--max-source-tokens",
               str(args.max_source_tokens), "--max-target-tokens", str(args.max_target_tokens),
               "--steps", str(args.steps), "--threads", str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{name}: failed\n{r.stderr[-2000:]}")
        out[name] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"  {name:<30} peak {out[name]['peak_mib'] / 1024:5.2f} GiB   planner's estimate "
              f"{out[name]['estimate_mib'] / 1024:5.2f} GiB   ({out[name]['tokens']} tokens a row)",
              flush=True)
    share = out["summary head"]["peak_mib"] / out["full head"]["peak_mib"]
    print(f"peak with the LM head on summary positions only: {share:.2f} of the full head's")


if __name__ == "__main__":
    main()
