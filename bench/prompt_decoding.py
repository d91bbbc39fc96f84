#!/usr/bin/env python
"""Decoding a prompt-tuned model, side by side: peft's uncached decoding (every new token
re-reads soft prompt + article + summary so far) against ours (``models.summarize``: the soft
prompt fed once as embeddings, the base model's KV cache), on the same real CNN/DM test
articles, greedy and beam search. Checks the outputs are the same token ids, then times both.

    python bench/prompt_decoding.py --model FILE.gguf|DIR --data-dir ../shared/data/cnn_dailymail

Without ``--model`` it builds a tiny GPT-2 in-process. Last line: uncached seconds over cached
seconds (greedy)."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory or GGUF file (default: tiny)")
    p.add_argument("--data-dir", required=True, help="CNN/DM CSV (or a directory with one)")
    p.add_argument("--articles", type=int, default=2)
    p.add_argument("--max-source-tokens", type=int, default=256)
    p.add_argument("--max-target-tokens", type=int, default=32)
    p.add_argument("--virtual-tokens", type=int, default=20)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> None:
    import torch

    from models.data.cnndm import SEPARATOR, load_cnndm_dir, prompt_batches, tokenize_articles
    from models.hf import load_tokenizer, resolve_model
    from models.summarize import generate_ids
    from models.summarize_prompt import SumPromptConfig, build_model
    from models.tiny import build_tiny_gpt2
    from search.output import quiet_libraries

    quiet_libraries()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    articles = load_cnndm_dir(args.data_dir, seed=0)
    tmp = tempfile.mkdtemp(prefix="prompt-decoding-")
    model_dir = (resolve_model(args.model) if args.model else
                 build_tiny_gpt2(Path(tmp) / "tiny", [a for a, _ in articles.train], seed=0,
                                 n_positions=1024))
    tok = load_tokenizer(model_dir)
    data = tokenize_articles(articles, tok, separator=SEPARATOR,
                             max_source_tokens=args.max_source_tokens,
                             max_target_tokens=args.max_target_tokens,
                             rouge_samples=args.articles, seed=0)
    torch.manual_seed(0)
    model = build_model(SumPromptConfig(model=model_dir, num_virtual_tokens=args.virtual_tokens),
                        data).eval()
    ex = data.test[: args.articles]
    print(f"model {model_dir}; {len(ex)} test articles, <= {args.max_source_tokens} source and "
          f"{args.max_target_tokens} summary tokens, {args.virtual_tokens} virtual tokens, "
          f"{args.threads} threads", flush=True)
    ratios = {}
    for beams in (1, args.beams):
        with torch.inference_mode():
            t0 = time.perf_counter()
            cached = generate_ids(model, data, ex, batch_size=len(ex), device="cpu",
                                  num_beams=beams)
            t_cached = time.perf_counter() - t0
            batch = next(prompt_batches(sorted(ex, key=lambda e: e.prompt_len),
                                        batch_size=len(ex), pad_id=data.pad_token_id))
            t0 = time.perf_counter()
            ref = model.generate(**batch, use_cache=False,
                                 max_new_tokens=data.max_target_tokens + 1, do_sample=False,
                                 num_beams=beams, pad_token_id=data.pad_token_id,
                                 eos_token_id=data.eos_token_id)
            t_uncached = time.perf_counter() - t0
        width = batch["input_ids"].shape[1]
        want = [r[: r.index(data.eos_token_id)] if data.eos_token_id in r else r
                for r in ref[:, width:].tolist()]
        order = sorted(range(len(ex)), key=lambda i: ex[i].prompt_len)
        same = [cached[i] for i in order] == want
        ratios[beams] = t_uncached / t_cached
        print(f"beams {beams}: uncached {t_uncached:.1f} s, cached {t_cached:.1f} s, ratio "
              f"{ratios[beams]:.1f}; same token ids: {same}", flush=True)
    print(f"{ratios[1]:.2f}")


if __name__ == "__main__":
    main()
