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
