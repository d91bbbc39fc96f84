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


def pretrain_tiny_lm(model_dir: str | Path, texts: Iterable[str], *, steps: int = 300,
                     block: int = 64, batch_size: int = 8, learning_rate: float = 3e-3,
                     seed: int = 0) -> str:
    """A few hundred steps of plain next-token training on ``texts`` (all weights), saved in
    place: adapters on a random network have nothing to adapt, so the summarization smoke test
    starts from a tiny model that has at least seen the language (a few seconds on a CPU)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = np.concatenate([np.asarray(tok(t + tok.eos_token)["input_ids"], dtype=np.int64)
                          for t in texts])
    blocks = torch.from_numpy(ids[: len(ids) // block * block].reshape(-1, block))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = blocks[rng.choice(len(blocks), size=min(batch_size, len(blocks)), replace=False)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir)
    return str(model_dir)
