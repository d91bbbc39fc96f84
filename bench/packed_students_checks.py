"""Checks and counts of bench/packed_students.py: the packed model's step-1 losses against the
separate students' (verified before timing), operator calls (and GPU kernels) of one step,
and calls per time step of the recurrence."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

from models.kd_loss import kd_loss  # noqa: E402
from models.student import GRUStudent  # noqa: E402
from packed_gru import KD_FRACTION, KD_TEMPERATURE, PackedGRUStudents, packed_kd_loss  # noqa: E402
from packed_students_data import fixed_length_batch, stack_batches, sync  # noqa: E402
from packed_throughput import count_ops  # noqa: E402


def verify(students: list[GRUStudent], packed: PackedGRUStudents, per_slot: list[list[dict]],
           stacked: list[dict]) -> float:
    """Step-1 losses with dropout off, on every prepared batch: slot k of the packed model
    against student k, each on its own batch (the packed copy padded wider). -> the largest
    difference; exits if any is beyond float tolerance, since the timing would then compare
    unlike work."""
    models = [*students, packed]
    for m in models:
        m.eval()
    diffs, scale = [], 1.0
    with torch.no_grad():
        for j, st in enumerate(stacked):
            sep = torch.stack([kd_loss(s(b[j]["input_ids"], b[j]["attention_mask"]),
                                       b[j]["teacher_logits"], b[j]["labels"],
                                       fraction=KD_FRACTION, temperature=KD_TEMPERATURE)
                               for s, b in zip(students, per_slot)])
            pk = packed_kd_loss(packed(st["input_ids"], st["attention_mask"]),
                                st["teacher_logits"], st["labels"], fraction=KD_FRACTION,
                                temperature=KD_TEMPERATURE)
            diffs.append((sep - pk).abs().max().item())
            scale = max(scale, sep.abs().max().item())
    for m in models:
        m.train()
    # cuDNN's RNN may use TF32 (torch.backends.cudnn.allow_tf32), the bmm path does not.
    tol = (2e-3 if stacked[0]["labels"].device.type == "cuda" else 1e-4) * scale
    if not max(diffs) <= tol:
        sys.exit(f"packed losses differ from the separate students' by {max(diffs):.2e} "
                 f"(> {tol:.1e}): the packed model is wrong")
    return max(diffs)


def count_calls(step, device: torch.device) -> tuple[int, int | None]:
    """(aten operator calls, GPU kernels or None off CUDA) of one call of ``step``."""
    ops = count_ops(step)  # bench/packed_throughput.py's count
    if device.type != "cuda":
        return ops, None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
    return ops, sum(e.count for e in prof.key_averages()
                    if getattr(e, "device_type", None) == DeviceType.CUDA)


def per_time_step(args, k: int, steppers: list, step_packed, device) -> dict:
    """Calls per time step: the count difference between training steps on batches of two
    fixed lengths (the optimizer's and the loss's calls cancel), K students against packed."""
    widths = (8, 16)
    counts = {}
    for width in widths:
        per_slot = fixed_length_batch(args, k, width, device)
        stacked = stack_batches(per_slot)

        def sep(per_slot=per_slot):
            for fn, b in zip(steppers, per_slot):
                fn(b)
            sync(device)

        def pk(stacked=stacked):
            step_packed(stacked)
            sync(device)

        sep(), pk()  # a new shape's one-off work (e.g. cuDNN plans) stays out of the count
        counts[width] = (count_calls(sep, device), count_calls(pk, device))
    span = widths[1] - widths[0]
    out = {}
    for j, name in enumerate(("ops", "kernels")):
        if counts[widths[0]][0][j] is None:
            continue
        out[f"{name}_t_sep"] = (counts[widths[1]][0][j] - counts[widths[0]][0][j]) / span
        out[f"{name}_t_pk"] = (counts[widths[1]][1][j] - counts[widths[0]][1][j]) / span
    return out
