"""Peak memory of a training epoch, on a GPU or the CPU (``models.loop`` reports it per
epoch; the tables' ``peak_mem_mb`` and ``train_mem_mb``)."""
from __future__ import annotations

import torch


class PeakMemory:
    """Peak memory of one epoch: CUDA max-allocated on a GPU; on the CPU the process's peak
    resident set (Linux: VmHWM, reset each epoch through /proc/self/clear_refs; elsewhere the
    lifetime peak ru_maxrss, which only grows)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    @staticmethod
    def _status_mb(key: str) -> float | None:
        """A ``/proc/self/status`` figure (Linux) in MiB; None elsewhere."""
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def current_mb(self) -> float:
        """What the process holds now (CUDA: allocated; CPU: resident set)."""
        if self.cuda:
            return torch.cuda.memory_allocated() / 2**20
        return self._status_mb("VmRSS") or 0.0

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        hwm = self._status_mb("VmHWM")
        if hwm is not None:
            return hwm
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
