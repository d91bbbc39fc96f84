"""bench/packed_students.py: the packed GRU students compute what K separate ``GRUStudent``s
compute (losses, gradients, one optimizer step), each slot on its own batch padded wider,
and the bench runs end to end on tiny sizes. The model is bench/packed_gru.py's."""
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import packed_gru as pg  # noqa: E402
import packed_students as ps  # noqa: E402
import packed_students_data as psd  # noqa: E402
from models.kd_loss import kd_loss  # noqa: E402
from models.student import GRUStudent  # noqa: E402

V, E, H, B, K = 30, 6, 5, 4, 3
# Each slot's own sentence lengths (one of length 1); the packed batch pads them all to 7.
LENGTHS = [[5, 3, 1, 4], [7, 2, 6, 6], [2, 2, 3, 1]]


def students(layers: int, bidirectional: bool, dtype=torch.float64) -> list[GRUStudent]:
    out = []
    for seed in range(K):
        torch.manual_seed(seed)
        out.append(GRUStudent(vocab_size=V, embed_dim=E, hidden_size=H, num_layers=layers,
                              bidirectional=bidirectional, dropout=0.0).to(dtype).train())
    return out


def batches(dtype=torch.float64) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    out = []
    for lengths in LENGTHS:
        width = max(lengths)
        ids = torch.randint(1, V, (B, width), generator=g)
        mask = (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask,
                    "labels": torch.randint(0, 2, (B,), generator=g),
                    "teacher_logits": torch.randn(B, 2, generator=g).to(dtype)})
    return out


def separate_loss(student, b):
    return kd_loss(student(b["input_ids"], b["attention_mask"]), b["teacher_logits"],
                   b["labels"], fraction=pg.KD_FRACTION, temperature=pg.KD_TEMPERATURE)


def packed_losses(packed, stacked):
    return pg.packed_kd_loss(packed(stacked["input_ids"], stacked["attention_mask"]),
                             stacked["teacher_logits"], stacked["labels"],
                             fraction=pg.KD_FRACTION, temperature=pg.KD_TEMPERATURE)


def slot_params(packed, student, k: int):
    """(packed slot k's tensor, the student's tensor) pairs, by the student's names."""
    yield packed.embed.view(K, V, E)[k], student.embed.weight
    for name, p in student.gru.named_parameters():
        yield packed.gru[name][k], p
    yield packed.head_weight[k], student.head.weight
    yield packed.head_bias[k], student.head.bias


def grads(packed, student, k: int):
    for name, p in student.gru.named_parameters():
        yield name, packed.gru[name].grad[k], p.grad
    yield "embed", packed.embed.grad.view(K, V, E)[k], student.embed.weight.grad
    yield "head", packed.head_weight.grad[k], student.head.weight.grad
    yield "head bias", packed.head_bias.grad[k], student.head.bias.grad


@pytest.mark.parametrize("layers,bidirectional,kept", [(1, False, False), (2, False, True),
                                                       (1, True, True), (2, True, False)])
def test_packed_losses_and_gradients_equal_separate_students(layers, bidirectional, kept):
    studs = students(layers, bidirectional)
    packed = pg.PackedGRUStudents(studs)
    if kept:  # the bench's way: kept buffers, the tables' gradient added in sparse
        packed.keep_grads()
    per_slot = batches()
    sep = torch.stack([separate_loss(s, b) for s, b in zip(studs, per_slot)])
    sep.sum().backward()
    pk = packed_losses(packed, psd.stack_batches(per_slot))
    pk.sum().backward()
    torch.testing.assert_close(pk, sep.detach(), rtol=1e-10, atol=1e-12)
    for k, s in enumerate(studs):
        for name, got, want in grads(packed, s, k):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=f"slot {k} {name}")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_one_training_step_matches_the_trials_step(bidirectional):
    """The bench's two steps (clip + fused AdamW each) leave every slot's weights where the
    separate student's are, and the next losses agree."""
    studs = students(2, bidirectional, torch.float32)
    packed = pg.PackedGRUStudents(studs)
    per_slot = batches(torch.float32)
    stacked = psd.stack_batches(per_slot)
    steps = [pg.separate_stepper(s, 1e-2) for s in studs]
    sep = torch.stack([fn(b) for fn, b in zip(steps, per_slot)])
    pk = pg.packed_stepper(packed, 1e-2)(stacked)
    torch.testing.assert_close(pk, sep, rtol=1e-5, atol=1e-6)
    for k, s in enumerate(studs):
        for got, want in slot_params(packed, s, k):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        after = torch.stack([separate_loss(s, b) for s, b in zip(studs, per_slot)])
        torch.testing.assert_close(packed_losses(packed, stacked), after, rtol=1e-5, atol=1e-6)


def test_clip_per_slot_is_clip_grad_norm_per_slot():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.01, 5.0, 0.3])  # slot 1 is clipped, the others are not
    stacked = [torch.zeros(K, 4, 3, requires_grad=True), torch.zeros(K, 2, requires_grad=True)]
    for p in stacked:
        p.grad = torch.randn(p.shape, generator=g) * scales.view(-1, *[1] * (p.ndim - 1))
    singles = [[p.grad[k].clone().requires_grad_() for p in stacked] for k in range(K)]
    pg.clip_per_slot(stacked, 1.0, K)
    for k in range(K):
        own = [torch.zeros_like(t, requires_grad=True) for t in singles[k]]
        for o, t in zip(own, singles[k]):
            o.grad = t.detach().clone()
        torch.nn.utils.clip_grad_norm_(own, 1.0)
        for p, o in zip(stacked, own):
            torch.testing.assert_close(p.grad[k], o.grad)


def test_packing_refuses_students_of_different_shapes():
    a = GRUStudent(vocab_size=V, embed_dim=E, hidden_size=H)
    b = GRUStudent(vocab_size=V, embed_dim=E, hidden_size=H + 1)
    with pytest.raises(ValueError, match="one shape"):
        pg.PackedGRUStudents([a, b])


def tiny_cola(root: Path) -> Path:
    """A CoLA directory in NYU's layout with short sentences (short recurrences keep the
    profiler's counting fast)."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    rows = "".join(f"src\t{i % 2}\t\tThe cat {'sat ' * (i % 5)}here .\n" for i in range(24))
    for name in ("in_domain_train.tsv", "in_domain_dev.tsv", "out_of_domain_dev.tsv"):
        (raw / name).write_text(rows)
    return root


def test_bench_main_runs_and_prints_the_figure(capsys, tmp_path):
    ratio = ps.main(["--ks", "1,2", "--vocab-size", "40", "--embed-dim", "8", "--hidden-size", "8",
                     "--batch-size", "4", "--steps", "3", "--repeats", "1", "--threads", "1",
                     "--bidirectional", "--batch-order", "own",
                     "--data-dir", str(tiny_cola(tmp_path)), "--no-processes"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"packed/separate samples/s at K=2: \d+\.\d\d", lines[-1])
    assert ratio > 0
    rows = [ln.split() for ln in lines if re.match(r"\s*\d+\s", ln)]
    assert [r[0] for r in rows] == ["1", "2"]


def test_bench_flags_are_checked(capsys):
    with pytest.raises(SystemExit) as e:
        ps.main(["--ks", "0,2"])
    assert e.value.code == 2 and "--ks" in capsys.readouterr().err
