import torch
import torch.nn.functional as F

from models.kd_loss import kd_loss
from models.student import GRUStudent


def test_fraction_one_is_cross_entropy():
    s, t = torch.randn(8, 2), torch.randn(8, 2)
    y = torch.randint(0, 2, (8,))
    assert torch.allclose(kd_loss(s, t, y, fraction=1.0, temperature=4.0), F.cross_entropy(s, y))


def test_identical_logits_have_zero_kl_term():
    s = torch.randn(8, 2)
    y = torch.randint(0, 2, (8,))
    assert torch.allclose(kd_loss(s, s.clone(), y, fraction=0.0, temperature=3.0),
                          torch.tensor(0.0), atol=1e-6)


def test_temperature_squared_factor():
    s, t = torch.randn(16, 2), torch.randn(16, 2)
    y = torch.randint(0, 2, (16,))
    for temp in (1.0, 2.0, 5.0):
        p_t = F.softmax(t / temp, -1)
        kl = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean()
        got = kd_loss(s, t, y, fraction=0.0, temperature=temp)
        assert torch.allclose(got, temp**2 * kl, atol=1e-5)
    mixed = kd_loss(s, t, y, fraction=0.3, temperature=2.0)
    assert torch.allclose(mixed, 0.3 * F.cross_entropy(s, y) + 0.7 * kd_loss(s, t, y, fraction=0.0,
                                                                              temperature=2.0))


def test_student_is_padding_invariant():
    torch.manual_seed(0)
    for bidirectional, layers in ((False, 1), (True, 2)):
        m = GRUStudent(vocab_size=50, embed_dim=8, hidden_size=12, num_layers=layers,
                       bidirectional=bidirectional, pad_token_id=0).eval()
        ids = torch.tensor([[5, 6, 7]])
        alone = m(ids, torch.ones_like(ids))
        padded = torch.tensor([[5, 6, 7, 0, 0, 0], [9, 8, 7, 6, 5, 4]])
        mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
        batch = m(padded, mask)
        assert torch.allclose(alone[0], batch[0], atol=1e-6)


def test_lora_retrain_adapter_loads_as_teacher(tmp_path, tiny_model):
    """A retrain output (peft adapter naming its base model) is a valid --teacher, and the
    teacher pass reproduces the adapter model's own logits."""
    import numpy as np

    from models.cola_lora import ColaLoraConfig, build_lora_model
    from models.hf import load_tokenizer
    from models.teacher import load_teacher, teacher_logits

    tok = load_tokenizer(tiny_model)
    torch.manual_seed(0)
    model = build_lora_model(ColaLoraConfig(model=tiny_model, lora_r=4),
                             pad_token_id=tok.pad_token_id).eval()
    with torch.no_grad():  # make the adapter and head non-trivial
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "adapter")
    teacher, tokenizer, info = load_teacher(str(tmp_path / "adapter"))
    assert info["kind"].startswith("LoRA adapter on")
    ids = [np.asarray(tok(s)["input_ids"], dtype=np.int32) for s in ("The dog sees a cat.", "Sees dog.")]
    got, _ = teacher_logits(teacher, ids, pad_id=tok.pad_token_id)
    for row, x in zip(got, ids):
        t = torch.as_tensor(x, dtype=torch.long)[None]
        with torch.no_grad():
            want = model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0]
        assert np.allclose(row, want.numpy(), atol=1e-5)
