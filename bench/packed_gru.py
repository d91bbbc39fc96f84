"""The packed model of bench/packed_students.py: K same-shaped ``GRUStudent``s (models/student.py)
as one HFTA-style module (``PackedGRUStudents``: embedding tables stacked into one [K * V, E],
each GRU layer's weights stacked [K, 3H, In] / [K, 3H, H] with the recurrence written out,
heads stacked [K, C, F]), its per-slot KD loss and gradient clipping, and the training steps
the bench times: a trial's step of one separate student and the same step of all K slots at
once (one AdamW over the stacked tensors)."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from models.kd_loss import kd_loss  # noqa: E402
from models.loop import _step, build_optimizer  # noqa: E402
from models.student import GRUStudent  # noqa: E402

# The KD study's defaults (models/cola_kd.py ColaKDConfig, models/loop.py).
KD_FRACTION, KD_TEMPERATURE, GRAD_CLIP = 0.5, 2.0, 1.0
GRU_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


# --------------------------------------------------------------------------- the packed model

def take_time(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [K, B, L, F], idx [K, B, T] (time positions) -> [K, B, T, F]."""
    return x.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))


def reversal_index(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[K, B] lengths -> [K, B, L]: each sentence's real tokens reversed, padding left in
    place after them (an involution: applied twice it is the identity). The backward
    direction then starts at the last real token, as nn.GRU over a packed sequence does."""
    t = torch.arange(width, device=lengths.device)
    n = lengths.unsqueeze(-1)
    return torch.where(t < n, n - 1 - t, t)


def gru_direction(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
                  b_hh: torch.Tensor) -> torch.Tensor:
    """One GRU direction of K slots: x [K, B, L, In], w_ih [K, 3H, In], w_hh [K, 3H, H],
    b_* [K, 3H] -> outputs [K, B, L, H]. Gates in nn.GRU's order (r, z, n):
    r, z = sigmoid(W_i x + b_i + W_h h + b_h); n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
    h' = (1 - z) * n + z * h."""
    k, b, width, d_in = x.shape
    hid = w_hh.shape[-1]
    # The input projection of every time step at once: [K, B*L, In] @ [K, In, 3H].
    gi = torch.baddbmm(b_ih.unsqueeze(1), x.reshape(k, b * width, d_in), w_ih.transpose(1, 2))
    # Unbound once: indexing gi[:, :, t] per step would make each step's backward write a
    # zeroed gradient of all of gi (quadratic in L); unbind's backward is one stack.
    gis = gi.view(k, b, width, 3 * hid).unbind(2)  # L x [K, B, 3H]
    w_hh_t, b_hh = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
    h = x.new_zeros(k, b, hid)
    outs = []
    for t in range(width):
        gh = torch.baddbmm(b_hh, h, w_hh_t)  # [K, B, 3H]: one bmm for all K slots
        i_rz, i_n = gis[t].split((2 * hid, hid), -1)
        h_rz, h_n = gh.split((2 * hid, hid), -1)
        r, z = torch.sigmoid(i_rz + h_rz).chunk(2, -1)
        n = torch.tanh(i_n + r * h_n)
        h = n + z * (h - n)
        outs.append(h)
    return torch.stack(outs, 2)


class PackedGRUStudents(nn.Module):
    """K same-shaped ``GRUStudent``s in one module, initialised with (copies of) their weights.
    forward: input_ids, attention_mask [K, B, L] (right padding) -> logits [K, B, C], slot k
    computing what student k computes on row k.

    Padding rows of the tables get no gradient without ``padding_idx``: padding sits after each
    sentence's last real token, which the recurrence (forward, and backward after the
    per-sentence reversal) never reads back from.

    ``keep_grads`` (the bench's packed step calls it) makes the gradients persistent buffers,
    zeroed in place each step, with the tables' gradient arriving sparse (the rows looked up)
    and added into its buffer: the default dense backward allocates a fresh zeroed [K, V, E]
    tensor every step, which on the CPU is K tables' worth of newly mapped pages to fault in
    (allocations that large go straight to mmap), a cost the separate students' smaller
    tables do not pay."""

    def __init__(self, students: list[GRUStudent]):
        super().__init__()
        first = students[0]
        shapes = {tuple((n, p.shape) for n, p in s.named_parameters()) for s in students}
        if len(shapes) != 1:
            raise ValueError("packing needs students of one shape")
        self.k, self.directions = len(students), first.directions
        self.num_layers, self.drop_p = first.gru.num_layers, first.drop.p
        self.vocab_size = first.embed.num_embeddings
        stack = lambda get: nn.Parameter(torch.stack([get(s).detach().clone() for s in students]))
        # The K tables stacked and flattened, [K * V, E]: slot k's rows start at k * V (flat,
        # so that a sparse gradient needs no reshape on its way back).
        self.embed = nn.Parameter(torch.cat([s.embed.weight.detach().clone() for s in students]))
        self.gru = nn.ParameterDict({
            name: stack(lambda s, name=name: getattr(s.gru, name))  # [K, 3H, In], [K, 3H]
            for name, _ in first.gru.named_parameters()})
        self.head_weight = stack(lambda s: s.head.weight)  # [K, C, H * directions]
        self.head_bias = stack(lambda s: s.head.bias)  # [K, C]
        self.sparse_grad = False

    def keep_grads(self) -> None:
        for p in self.parameters():
            p.grad = torch.zeros_like(p)
        self.sparse_grad = True

    def layer_params(self, layer: int, reverse: bool) -> list[torch.Tensor]:
        suffix = "_reverse" if reverse else ""
        return [self.gru[f"{n}_l{layer}{suffix}"] for n in GRU_NAMES]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        k = self.k
        lengths = attention_mask.sum(-1).clamp(min=1)  # [K, B]
        offsets = torch.arange(k, device=input_ids.device).view(k, 1, 1) * self.vocab_size
        # One gather over the stacked tables: slot k's ids index its own rows.
        x = F.embedding(input_ids + offsets, self.embed, sparse=self.sparse_grad)
        rev = reversal_index(lengths, x.shape[2]) if self.directions == 2 else None
        last = (lengths - 1).unsqueeze(-1)  # [K, B, 1]
        for layer in range(self.num_layers):
            if layer:
                x = F.dropout(x, self.drop_p, self.training)  # nn.GRU's between layers
            top = layer == self.num_layers - 1
            outs, ends = [], []
            for d in range(self.directions):
                seq = x if d == 0 else take_time(x, rev)
                out = gru_direction(seq, *self.layer_params(layer, d == 1))
                ends.append(take_time(out, last).squeeze(2))  # [K, B, H]: state at the true end
                if not top:
                    outs.append(out if d == 0 else take_time(out, rev))
            if not top:
                x = torch.cat(outs, -1)  # [K, B, L, H * directions]
        features = F.dropout(torch.cat(ends, -1), self.drop_p, self.training)
        head_w = self.head_weight.transpose(1, 2)  # [K, F, C]
        return torch.baddbmm(self.head_bias.unsqueeze(1), features, head_w)


def packed_kd_loss(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *,
                   fraction: float, temperature: float) -> torch.Tensor:
    """models/kd_loss.py per slot: logits, teacher [K, B, C], labels [K, B] -> losses [K]."""
    k, b, c = logits.shape
    ce = F.cross_entropy(logits.reshape(k * b, c), labels.reshape(-1), reduction="none")
    ce = ce.view(k, b).mean(1)
    if fraction >= 1.0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                  log_target=True, reduction="none").sum((1, 2)) / b  # "batchmean" per slot
    return fraction * ce + (1.0 - fraction) * t * t * kl


def clip_per_slot(params: list[torch.Tensor], max_norm: float, k: int) -> torch.Tensor:
    """clip_grad_norm_ for each of K slots on its own -> norms [K]. Every tensor is K slots'
    stacked along dim 0 (slot-major), so ``grad.view(k, -1)`` row i is slot i's."""
    # One pass over each gradient, no temporary of its size.
    norms = torch.stack([torch.linalg.vector_norm(p.grad.view(k, -1), dim=1) for p in params])
    norms = torch.linalg.vector_norm(norms, dim=0)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0).unsqueeze(1)  # torch's formula
    for p in params:
        p.grad.view(k, -1).mul_(coef)
    return norms


# --------------------------------------------------------------------------- training steps

def separate_stepper(student: GRUStudent, lr: float):
    """A trial's step (models/loop.py): kd_loss, backward, clip, fused AdamW, schedule."""
    opt, sched = build_optimizer(student, learning_rate=lr, weight_decay=0.0,
                                 total_steps=10**6, warmup_ratio=0.0)
    params = [p for p in student.parameters() if p.requires_grad]

    def step(batch: dict) -> torch.Tensor:
        logits = student(batch["input_ids"], batch["attention_mask"])
        loss = kd_loss(logits, batch["teacher_logits"], batch["labels"], fraction=KD_FRACTION,
                       temperature=KD_TEMPERATURE)
        loss.backward()
        _step(params, opt, sched, GRAD_CLIP)
        return loss.detach()
    return step


def packed_stepper(model: PackedGRUStudents, lr: float):
    """The same step for all K slots at once; one AdamW (the trials' fused one) over the
    stacked tensors, exact because every slot shares the hyperparameters here. Gradients
    are kept buffers (``PackedGRUStudents.keep_grads``), zeroed in place."""
    opt, sched = build_optimizer(model, learning_rate=lr, weight_decay=0.0,
                                 total_steps=10**6, warmup_ratio=0.0)
    params = list(model.parameters())
    model.keep_grads()

    def step(batch: dict) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"])
        losses = packed_kd_loss(logits, batch["teacher_logits"], batch["labels"],
                                fraction=KD_FRACTION, temperature=KD_TEMPERATURE)
        losses.sum().backward()  # slots share no parameter: each gets its own loss's gradient
        clip_per_slot(params, GRAD_CLIP, model.k)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=False)
        return losses.detach()
    return step
