"""What every CoLA adapter method shares (LoRA, and any peft method that wraps a
sequence-classification model: IA3, DoRA): the training loss with its confusion counts, the
evaluator, the batches, saving and loading the adapter. A method module supplies only its
config class and ``build_model(cfg, pad_token_id=..., meta=...)``; the trial harness's one
trainable (``models.trial.trainable_for``) runs it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from models.data.batching import classification_batches
from models.classify import make_evaluator, stage_splits, stage_track
from models.data.classification import ClassificationData
from models.data.cola import SCORE
from models.hf import count_parameters
from models.loop import TrialSetup, micro_batched
from models.metrics import confusion_counts, confusion_metrics


def forward(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def loss(model, batch):
    out = model(**batch)
    return out.loss, confusion_counts(out.logits, batch["labels"])


def epoch_batches(cfg, ids, labels, *, pad_id: int, epoch: int):
    """A trial's training batches of ``epoch``: its batch size, and an order seeded by its seed
    and the epoch (the packed engine draws the same, so a packed trial sees what it would
    alone)."""
    return classification_batches(ids, labels, batch_size=cfg.batch_size, pad_id=pad_id,
                                  shuffle_seed=cfg.seed * 1000 + epoch,
                                  group_by_length=cfg.group_by_length)


INIT_STD = 0.02  # a new classification head's initialisation (transformers' initializer_range)


def seeded_start(model, seed: int, init_std: float = INIT_STD) -> None:
    """The adapter's random initial weights drawn as a packed slot draws its own
    (``models.packed.model.PackedModel.init_slot``): from a generator seeded with the trial's
    seed alone, the head ~ N(0, init_std) first, then each LoRA A, in module order, as peft
    initialises it (kaiming-uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))). So one
    configuration starts from the same weights solo and packed. B, DoRA's magnitudes and IA3's
    vectors start where peft puts them (0, the weight's norms, 1), which no seed changes."""
    import math

    import torch
    from peft.tuners.lora import LoraLayer

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = next(m for n, m in model.named_modules()
                    if n.endswith("score.modules_to_save.default"))
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * init_std)
        if head.bias is not None:
            head.bias.zero_()
        for module in model.modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                a = module.lora_A["default"].weight  # [r, in]
                bound = 1.0 / math.sqrt(module.in_features)
                a.copy_(torch.rand(a.shape, generator=g) * 2 * bound - bound)


def adapter_setup(cfg, data: ClassificationData, device, *, build_model: Callable) -> TrialSetup:
    """The TrialSetup of a peft adapter on a sequence classifier (the trial harness calls it
    once per trial)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    model = build_model(cfg, pad_token_id=data.pad_token_id)
    seeded_start(model, cfg.seed)
    model = model.to(device)
    train_split, evals, metric = stage_splits(data, cfg.stage, score=SCORE)
    ids, labels = data.split(train_split)

    def train_batches(epoch: int):
        return epoch_batches(cfg, ids, labels, pad_id=data.pad_token_id, epoch=epoch)

    def save(path: str):
        model.save_pretrained(path)  # adapter_model.safetensors + adapter_config.json

    def load(path: str):
        set_peft_model_state_dict(model, load_file(str(Path(path) / "adapter_model.safetensors")))

    return TrialSetup(
        # model(**batch).loss is the mean over rows: micro-batches weigh theirs by row count
        model=model, loss_fn=micro_batched(loss, cfg.micro_batch_size),
        train_batches=train_batches,
        steps_per_epoch=-(-len(ids) // cfg.batch_size),
        evaluate=make_evaluator(data, evals, forward=forward, device=device),
        best_metric=metric, mode="max", save_weights=save, load_weights=load,
        info=count_parameters(model), track=stage_track(cfg.stage),
        train_stats=confusion_metrics,
    )


def make_setup(build_model: Callable) -> Callable:
    """The method's ``setup(cfg, data, device)``."""

    def setup(cfg, data, device):
        return adapter_setup(cfg, data, device, build_model=build_model)

    return setup
