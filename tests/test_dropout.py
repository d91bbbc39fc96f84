"""models.dropout: the cheaper CPU dropout keeps each element with probability 1 - p
(independently, scaled by the inverse), is the identity in eval mode and at p = 0, follows
torch's seed, passes gradients through the same mask, and swaps in for every nn.Dropout of a
peft model without touching its state dict or its eval-mode outputs."""
import pytest
import torch

from models.dropout import CpuDropout, use_cpu_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5, 0.9])
def test_keeps_each_element_with_probability_1_minus_p(p):
    torch.manual_seed(0)
    x = torch.ones(400, 1001)  # odd element count: the last 64-bit draw is cut
    y = CpuDropout(p).train()(x)
    kept = y != 0
    n = x.numel()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sd + 2**-16
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)), rtol=1e-3)
    assert y.mean().item() == pytest.approx(1.0, abs=5 * sd / (1 - p) + 1e-3)
    # Independent elements: neighbours (same 64-bit draw) are kept together no more often
    # than chance.
    pair = (kept[:, 0::2][:, :500] & kept[:, 1::2][:, :500]).float().mean().item()
    assert pair == pytest.approx((1 - p) ** 2, abs=0.01)


def test_identity_in_eval_and_at_zero_and_all_zero_at_one():
    x = torch.randn(8, 16)
    assert torch.equal(CpuDropout(0.3).eval()(x), x)
    assert torch.equal(CpuDropout(0.0).train()(x), x)
    assert torch.count_nonzero(CpuDropout(1.0).train()(x)) == 0
    with pytest.raises(ValueError):
        CpuDropout(1.5)


def test_follows_torch_seed_and_gradient_uses_the_mask():
    d = CpuDropout(0.2).train()
    torch.manual_seed(3)
    a = d(torch.ones(64, 64))
    torch.manual_seed(3)
    b = d(torch.ones(64, 64))
    assert torch.equal(a, b)
    assert not torch.equal(a, d(torch.ones(64, 64)))
    x = torch.randn(32, 33, requires_grad=True)
    torch.manual_seed(5)
    y = d(x)
    y.sum().backward()
    mask = y.detach() != 0
    assert torch.allclose(x.grad, mask.float() * (y.detach() / x.detach()).where(mask, 0.0))


def test_swaps_every_dropout_of_a_peft_model(synthetic, tiny_model):
    from models.data.classification import tokenize_splits
    from models.cola_lora import ColaLoraConfig, build_lora_model
    from models.hf import load_tokenizer

    data = tokenize_splits(synthetic, load_tokenizer(tiny_model), selection_fraction=0.2, seed=0)
    torch.manual_seed(0)
    model = build_lora_model(ColaLoraConfig(model=tiny_model, lora_dropout=0.2),
                             pad_token_id=data.pad_token_id)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = sum(type(m) is torch.nn.Dropout for m in model.modules())
    lora = sum(type(m) is torch.nn.Dropout for name, m in model.named_modules()
               if "lora_dropout" in name)
    assert n > lora > 0
    ids = torch.randint(3, 50, (4, 9))
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
    assert use_cpu_dropout(model) == n
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert {m.p for m in model.modules() if isinstance(m, CpuDropout)} >= {0.2}
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, want)
    assert use_cpu_dropout(model) == 0  # idempotent
