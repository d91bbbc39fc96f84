"""The distillation loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            fraction: float, temperature: float) -> torch.Tensor:
    """fraction * CE(student, labels)
    + (1 - fraction) * T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's
    when T changes (Hinton et al., 2015). Logits [B, C], labels [B]."""
    ce = F.cross_entropy(student_logits, labels)
    if fraction >= 1.0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  log_target=True, reduction="batchmean")
    return fraction * ce + (1.0 - fraction) * t * t * kl
