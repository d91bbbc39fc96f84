"""A tiny GPT-2 and a byte-level BPE tokenizer trained on the fly, saved as an ordinary model
directory: the smoke tests and the test suite use it instead of a hub download."""
from __future__ import annotations

import json
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
    from models.console import bar

    for _ in bar(range(steps), desc="pretraining the tiny model", unit="step"):
        batch = blocks[rng.choice(len(blocks), size=min(batch_size, len(blocks)), replace=False)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir)
    return str(model_dir)


def _tiny_tokenizer(out: Path, texts: list[str], vocab_size: int, n_positions: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                            pad_token="<|endoftext|>", model_max_length=n_positions)
    tok.save_pretrained(out)
    return tok


def build_tiny_llama(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 400,
                     n_layer: int = 2, hidden: int = 32, n_head: int = 4, n_kv_head: int = 2,
                     n_positions: int = 256, seed: int = 0) -> str:
    """A randomly initialised Llama LM (grouped-query attention, tied embeddings, as
    SmolLM2) with a BPE tokenizer trained on ``texts``, saved to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tiny_tokenizer(out, list(texts), vocab_size, n_positions)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=n_layer, num_attention_heads=n_head,
                         num_key_value_heads=n_kv_head, max_position_embeddings=n_positions,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out)
    return str(out)


def _permute_qk(w, n_head: int):
    """llama.cpp's row order for Q and K (transformers undoes it when reading GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def write_llama_gguf(model_dir: str | Path, out_file: str | Path) -> str:
    """Write a saved Llama model directory (float32, tied embeddings, GPT-2-style BPE
    tokenizer) as a GGUF file the way llama.cpp's converter lays it out: tests use it to
    exercise ``--model FILE.gguf`` without a download."""
    import gguf
    import numpy as np
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    c = model.config
    w = gguf.GGUFWriter(str(out_file), "llama")
    w.add_name(Path(model_dir).name)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]) if getattr(
        c, "rope_parameters", None) else 10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    backend = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["merges"]]
    special = set(tok.all_special_ids)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                       for _, i in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight":  # tied to the embedding: llama.cpp omits it
            continue
        a = t.detach().float().numpy()
        if hf_name.endswith("q_proj.weight"):
            a = _permute_qk(a, c.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            a = _permute_qk(a, c.num_key_value_heads)
        w.add_tensor(names.get_name(hf_name, try_suffixes=(".weight",)), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(out_file)
