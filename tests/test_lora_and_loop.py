import numpy as np
import torch

from models.data.classification import ClassificationData
from models.cola_lora import ColaLoraConfig, build_lora_model, setup
from models.loop import LoopState, build_optimizer, train_loop


def lora_count(shapes, r):
    """Trainable LoRA parameters: r * (in + out) per adapted matrix."""
    return sum(r * (i + o) for i, o in shapes)


def test_lora_trainable_count_tiny_gpt2(tiny_model):
    cfg = ColaLoraConfig(model=tiny_model, lora_r=4)
    model = build_lora_model(cfg, pad_token_id=0)
    d, layers = 32, 2
    # per block: c_attn d->3d, attn c_proj d->d, c_fc d->4d, mlp c_proj 4d->d
    per_block = lora_count([(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)], 4)
    head = d * 2  # the new classification head trains in full (no bias in GPT-2's score)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == layers * per_block + head
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("wte" in n for n in frozen) and any("wpe" in n for n in frozen)  # embeddings frozen


def test_lora_count_gpt2_small_shapes(tmp_path):
    """GPT-2 small's shapes (no weights needed: meta device): rank 4 is ~0.59 M trainable."""
    from transformers import GPT2Config

    GPT2Config().save_pretrained(tmp_path)
    model = build_lora_model(ColaLoraConfig(model=str(tmp_path), lora_r=4), pad_token_id=50256,
                             meta=True)
    trainable, total = model.get_nb_trainable_parameters()
    assert 0.58e6 < trainable < 0.7e6, trainable
    assert 124e6 < total < 126e6


def separable(n=240, seed=0):
    """Label 1 iff the sentence contains token 7: trivially separable."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for i in range(n):
        y = i % 2
        seq = rng.integers(10, 60, size=rng.integers(3, 9)).astype(np.int32)
        if y:
            seq[rng.integers(len(seq))] = 7
        ids.append(seq)
        labels.append(y)
    labels = np.array(labels)
    idx = np.arange(n)
    return ClassificationData(train_ids=ids, train_labels=labels, fit_idx=idx[:200], select_idx=idx[200:],
                    dev_ids=ids[200:], dev_labels=labels[200:], dev_groups=None, pad_token_id=0,
                    origin="toy")


def test_loop_learns_separable_toy_set(tiny_model):
    torch.manual_seed(0)
    data = separable()
    cfg = ColaLoraConfig(model=tiny_model, lora_r=8, lora_alpha=16, learning_rate=1e-2,
                         batch_size=16, max_epochs=8)
    s = setup(cfg, data, "cpu")
    opt, sched = build_optimizer(s.model, learning_rate=cfg.learning_rate, weight_decay=0.0,
                                 total_steps=s.steps_per_epoch * cfg.max_epochs, warmup_ratio=0.06)
    reports = []
    state = train_loop(model=s.model, optimizer=opt, scheduler=sched, loss_fn=s.loss_fn,
                       train_batches=s.train_batches, evaluate=s.evaluate,
                       max_epochs=cfg.max_epochs, best_metric=s.best_metric,
                       report=lambda m, st: reports.append(dict(m)))
    assert [r["epoch"] for r in reports] == list(range(1, 9))
    for key in ("train_loss", "val_loss", "val_accuracy", "val_mcc", "best_val_mcc", "elapsed_s"):
        assert key in reports[0]
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    # Far above chance (0); 8 epochs of a tiny model need not separate it perfectly.
    assert state.best == max(r["val_mcc"] for r in reports) >= 0.75
    assert reports[-1]["elapsed_s"] > reports[0]["elapsed_s"]


def test_loop_resumes_from_state(tiny_model):
    data = separable()
    cfg = ColaLoraConfig(model=tiny_model, max_epochs=3, batch_size=32)
    s = setup(cfg, data, "cpu")
    opt, sched = build_optimizer(s.model, learning_rate=1e-3, weight_decay=0.0,
                                 total_steps=s.steps_per_epoch * 3, warmup_ratio=0.0)
    epochs = []
    train_loop(model=s.model, optimizer=opt, scheduler=sched, loss_fn=s.loss_fn,
               train_batches=s.train_batches, evaluate=s.evaluate, max_epochs=3,
               best_metric="val_mcc", state=LoopState(epoch=2, best=0.5, elapsed_s=10.0),
               report=lambda m, st: epochs.append((m["epoch"], m["elapsed_s"], m["best_val_mcc"])))
    assert len(epochs) == 1 and epochs[0][0] == 3 and epochs[0][1] > 10.0
    assert epochs[0][2] >= 0.5


def test_schedule_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    for total, ratio in ((100, 0.06), (37, 0.0), (10, 0.5)):
        p = [torch.nn.Parameter(torch.zeros(2, 2))]
        ours_opt, ours = build_optimizer(torch.nn.Linear(2, 2), learning_rate=1.0,
                                         weight_decay=0.0, total_steps=total, warmup_ratio=ratio)
        ref_opt = torch.optim.AdamW(p, lr=1.0)
        ref = get_linear_schedule_with_warmup(ref_opt, int(ratio * total), total)
        for _ in range(total):
            assert abs(ours.get_last_lr()[0] - ref.get_last_lr()[0]) < 1e-12
            ours_opt.step(), ours.step(), ref_opt.step(), ref.step()
