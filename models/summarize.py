"""Study 3, the part every summarization method shares: config fields, the causal-LM loss on
summary tokens, evaluation (token-weighted eval loss), greedy decoding + ROUGE for retrains,
and saving / restoring whatever the method trains.

A method (``models/summarize_prompt.py``, ``summarize_lora.py``, ``summarize_last_layers.py``)
adds its config fields and ``build_model(cfg)`` and registers in ``models/registry.py``; the
command (``search/cnndm_summarize.py``) still lists the methods by name (``METHODS``) and
counts each one's parameters, so a fourth method also touches it.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from models.data.cnndm import IGNORE, SumData, lm_batches, prompt_batches
from models.config import TrialConfig, require
from models.hf import count_parameters
from models.loop import FILES, TrialSetup, micro_batched

TRAINABLE_WEIGHTS = "trainable.safetensors"  # non-peft methods: the trained tensors only
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
SUMMARIES = "summaries.jsonl"  # beside the retrained weights: generated and reference texts


@dataclass(frozen=True)
class SummarizeConfig(TrialConfig):
    learning_rate: float = 1e-3
    batch_size: int = 8
    max_epochs: int = 10
    grad_accum: int = 1  # micro-batches per optimizer step
    patience: int = 2  # epochs without a better eval loss before the trial stops
    # Decoding of the retrained model's test summaries, as CNN/DM summarization work does it:
    # beam search, no repeated trigram, a minimum length (greedy decoding loops on a small LM).
    num_beams: int = 4
    no_repeat_ngram_size: int = 3
    min_summary_tokens: int = 8
    # Recompute each block's activations in the backward pass: less memory, ~30 % more time.
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        super().validate()
        for name in ("num_beams", "no_repeat_ngram_size", "min_summary_tokens"):
            low = 1 if name == "num_beams" else 0
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= low, name,
                    getattr(self, name), f"must be an integer >= {low}")
        require(isinstance(self.gradient_checkpointing, bool), "gradient_checkpointing",
                self.gradient_checkpointing, "must be true or false")
        require(isinstance(self.grad_accum, int) and self.grad_accum >= 1, "grad_accum",
                self.grad_accum, "must be an integer >= 1")
        require(isinstance(self.patience, int) and self.patience >= 1, "patience",
                self.patience, "must be an integer >= 1")


def load_causal_lm(name: str, *, pad_token_id: int):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(name)
    model.config.pad_token_id = pad_token_id
    return model


def summary_loss(model, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the summary tokens, as ``model(**batch).loss``
    computes it, but with the LM head applied only from the first position whose next token
    is a summary token. The head's logits [B, L, vocab] in float32 are the largest tensor of a
    step (SmolLM2: 49,152 numbers a position); the article positions never reach the loss."""
    labels = batch["labels"]  # [B, L], IGNORE on article, separator and padding
    bearing = (labels != IGNORE).any(0).nonzero()
    first = int(bearing[0]) if len(bearing) else labels.shape[1] - 1  # >= 1: an article token
    keep = labels.shape[1] - first + 1  # positions first-1 .. L-1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits[:, -keep:-1]  # [B, keep-1, V]
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels[:, first:].flatten(), ignore_index=IGNORE)


def summary_tokens(batch) -> int:
    """What ``summary_loss`` averages over: the batch's loss-bearing (summary) labels. Every
    position before the first of them is IGNORE, so this is the count ``cross_entropy`` with
    ``ignore_index`` divides by; micro-batches weigh their losses by it."""
    return int((batch["labels"] != IGNORE).sum())


def token_weighted_loss(model, examples, *, batch_size: int, pad_id: int, device) -> float:
    """Mean negative log-likelihood per summary token over ``examples`` (each batch's mean is
    weighted by its number of loss-bearing tokens)."""
    from models.data.batching import length_sorted
    from models.loop import autocast, to_device

    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    order, _ = length_sorted([e.input_ids for e in examples])  # a sum: any order will do
    for batch in lm_batches(examples, batch_size=batch_size, pad_id=pad_id, order=order):
        # HF shifts labels by one inside the model: position 0's label never counts, and it is
        # always IGNORE (an article token), so this is the count the model averages over.
        n = int((batch["labels"][:, 1:] != IGNORE).sum())  # host tensor: no device sync
        batch = to_device(batch, device)
        with autocast(device):
            loss = summary_loss(model, batch)
        total += loss.double() * n
        count += n
    return (total / max(count, 1)).item()


def generate_summaries(model, data: SumData, examples, *, batch_size: int, device,
                       **decoding) -> list[str]:
    """Decoded texts of ``generate_ids``."""
    return [data.tokenizer.decode(row, skip_special_tokens=True).strip()
            for row in generate_ids(model, data, examples, batch_size=batch_size, device=device,
                                    **decoding)]


def generate_ids(model, data: SumData, examples, *, batch_size: int, device,
                 num_beams: int = 1, no_repeat_ngram_size: int = 0,
                 min_summary_tokens: int = 0) -> list[list[int]]:
    """Decoding after each example's prompt (article + separator), between
    ``min_summary_tokens`` and ``max_target_tokens`` + EOS new tokens (beam search when
    ``num_beams`` > 1): the new token ids up to the first EOS."""
    out: list[list[int]] = [[] for _ in examples]
    prompt_learning = getattr(getattr(model, "active_peft_config", None), "is_prompt_learning",
                              False)
    # Similar lengths together: less left padding.
    order = sorted(range(len(examples)), key=lambda i: examples[i].prompt_len)
    ordered = [examples[i] for i in order]
    k = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "position ids are not supported ..."
        for batch in prompt_batches(ordered, batch_size=batch_size, pad_id=data.pad_token_id):
            options = dict(max_new_tokens=data.max_target_tokens + 1, do_sample=False,
                           num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size,
                           min_new_tokens=min(min_summary_tokens, data.max_target_tokens),
                           pad_token_id=data.pad_token_id, eos_token_id=data.eos_token_id)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            if prompt_learning:
                gen, width = _generate_with_soft_prompt(model, ids, mask, options), 0
            else:
                gen, width = model.generate(input_ids=ids, attention_mask=mask, **options), \
                    ids.shape[1]
            for row in gen[:, width:].tolist():
                if data.eos_token_id in row:
                    row = row[: row.index(data.eos_token_id)]
                out[order[k]] = row
                k += 1
    return out


def _generate_with_soft_prompt(model, ids, mask, options: dict):
    """Cached decoding of a prompt-tuned model: the soft prompt's embeddings go in front of the
    prompt's once, as ``inputs_embeds``, and the base model decodes with its KV cache. (peft
    0.21's own cached decoding with transformers >= 5.24 prepends the virtual tokens again at
    every step, so positions run past the context; re-reading the whole context each step is
    correct but costs a full forward per token.) -> the new token ids only."""
    import torch

    base = model.get_base_model()
    embeds = base.get_input_embeddings()(ids)
    prompt = model.get_prompt(batch_size=ids.shape[0]).to(device=embeds.device, dtype=embeds.dtype)
    ones = torch.ones(prompt.shape[:2], dtype=mask.dtype, device=mask.device)
    return base.generate(inputs_embeds=torch.cat([prompt, embeds], dim=1),
                         attention_mask=torch.cat([ones, mask], dim=1), **options)


def summaries_jsonl(predictions: list[str], references: list[str]) -> str:
    """One JSON line per test article: the generated summary beside its reference."""
    import json

    return "".join(json.dumps({"i": i, "generated": p, "reference": r}) + "\n"
                   for i, (p, r) in enumerate(zip(predictions, references)))


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (rouge-score, Porter stemming), in [0, 1]."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for t in ROUGE_TYPES:
            sums[t] += scores[t].fmeasure
    return {t: v / max(len(references), 1) for t, v in sums.items()}


def save_trainable(model, path: str) -> None:
    """peft models: the adapter (safetensors + adapter_config.json); others: the tensors that
    train, by name."""
    from peft import PeftModel
    from safetensors.torch import save_file

    if isinstance(model, PeftModel):
        model.save_pretrained(path)
        return
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters()
               if p.requires_grad}
    save_file(tensors, str(Path(path) / TRAINABLE_WEIGHTS))


def load_trainable(model, path: str) -> None:
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_file(str(Path(path) / "adapter_model.safetensors")))
        return
    # strict=False: the file holds only the trained tensors; a name it has that the model
    # lacks still fails.
    result = model.load_state_dict(load_file(str(Path(path) / TRAINABLE_WEIGHTS)), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path}: tensors not in the model: {result.unexpected_keys[:3]}")


def setup(cfg: SummarizeConfig, data: SumData, device, *,
          build_model: Callable[[SummarizeConfig, SumData], torch.nn.Module]) -> TrialSetup:
    """Sweep trials train on `train` and are scored on `validation`; retrains train on
    `train`, stop early on `validation` and are reported on `test` (eval loss every epoch,
    ROUGE once, on the best epoch's model)."""
    model = build_model(cfg, data).to(device)
    if cfg.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (adapters, soft prompts) without extra hooks.
        getattr(model, "get_base_model", lambda: model)().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    eval_bs = max(2 * cfg.batch_size, 16)  # no gradients kept: twice the training batch fits
    evals = {"val": "validation"} if cfg.stage == "sweep" else {"val": "validation", "test": "test"}

    def train_batches(epoch: int):
        return lm_batches(data.train, batch_size=cfg.batch_size, pad_id=data.pad_token_id,
                          shuffle_seed=cfg.seed * 1000 + epoch, group_by_length=cfg.group_by_length)

    @torch.inference_mode()
    def evaluate(m) -> dict:
        return {f"{prefix}_loss": token_weighted_loss(m, data.split(split), batch_size=eval_bs,
                                                      pad_id=data.pad_token_id, device=device)
                for prefix, split in evals.items()}

    @torch.inference_mode()
    def final_evaluate(m) -> dict:
        out = evaluate(m)
        t0 = time.perf_counter()
        refs = data.references
        preds = generate_summaries(m, data, data.test[: len(refs)], batch_size=eval_bs,
                                   device=device, num_beams=cfg.num_beams,
                                   no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                                   min_summary_tokens=cfg.min_summary_tokens)
        out.update({f"test_{k}": v for k, v in rouge(preds, refs).items()})
        out[FILES] = {SUMMARIES: summaries_jsonl(preds, refs)}
        out.update({"rouge_samples": len(refs), "generate_s": time.perf_counter() - t0,
                    "test_ppl": math.exp(min(out["test_loss"], 50.0))})
        return out

    batches = -(-len(data.train) // cfg.batch_size)
    return TrialSetup(
        model=model, loss_fn=micro_batched(summary_loss, cfg.micro_batch_size, summary_tokens),
        train_batches=train_batches,
        steps_per_epoch=-(-batches // cfg.grad_accum),
        evaluate=evaluate, best_metric="val_loss", mode="min",
        save_weights=lambda path: save_trainable(model, path),
        load_weights=lambda path: load_trainable(model, path),
        info=count_parameters(model), grad_accum=cfg.grad_accum, patience=cfg.patience,
        keep_best=True, final_evaluate=final_evaluate if cfg.stage == "retrain" else None,
    )


def make_setup(build_model: Callable) -> Callable:
    """A method's ``setup(cfg, data, device)``: this module's setup with the method's
    ``build_model(cfg, data)``."""

    def method_setup(cfg, data, device):
        return setup(cfg, data, device, build_model=build_model)

    return method_setup

