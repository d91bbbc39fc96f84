"""A tiny GPT-2 and a byte-level BPE tokenizer trained on the fly, saved as an ordinary model
directory: the smoke tests and the test suite use it instead of a hub download."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable


def build_tiny_gpt2(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 400,
                    n_layer: int = 2, n_embd: int = 32, n_head: int = 2, n_positions: int = 256,
                    seed: int = 0) -> str:
    """Train a tokenizer on ``texts``, build a randomly initialised GPT-2 LM with that
    vocabulary, save both to ``out_dir`` and return its path."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                            model_max_length=n_positions)
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, bos_token_id=tok.eos_token_id,
                        eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(out)
    return str(out)
