"""How many trials to pack (``--pack auto``): time packed steps of the sweep's largest
configuration for K = 1, 2, 4, ... slots on the engine's own device and take the knee of the
aggregate throughput curve: the smallest K within ``share`` of the best measured. Ray-free.

On a GPU a small trial's step is bound by per-operator cost, so the curve climbs with K until
the card's compute is the limit and then flattens: more slots past the knee only slow every
trial down (and leave ASHA fewer results per decision). On a CPU the curve is flat from the
start, so the knee is small; the memory plan caps K either way, and on a GPU an out-of-memory
step ends the probe (the K before it is the largest that fits).

Each K gets a fresh engine model (the optimizer's work is over every slot of the capacity, so
a larger capacity with idle slots would not time K); its first step trains the longest
sentences (the epoch's peak memory), the next ``steps`` are timed."""
from __future__ import annotations

import time
from typing import Callable

import torch

from models.data.batching import classification_batches, length_sorted


def knee(curve: list[dict], share: float = 0.9) -> int:
    """The smallest K whose samples/s is at least ``share`` of the best on ``curve``."""
    best = max(point["samples_per_s"] for point in curve)
    return min(point["k"] for point in curve if point["samples_per_s"] >= share * best)


def endless_batches(data, batch_size: int, seed: int):
    """The longest sentences' batch (an epoch's peak memory), then length-grouped shuffled
    batches, epoch after epoch: a timed run never runs out."""
    ids, labels = data.split("fit")
    longest = length_sorted(ids)[0][::-1][:batch_size].copy()
    yield from classification_batches(ids, labels, batch_size=batch_size,
                                      pad_id=data.pad_token_id, order=longest)
    epoch = 0
    while True:
        epoch += 1
        yield from classification_batches(ids, labels, batch_size=batch_size,
                                          pad_id=data.pad_token_id,
                                          shuffle_seed=seed * 1000 + epoch, group_by_length=True)


def start_slots(*, model_dir: str, data, k: int, batch_size: int, method, adapter: dict,
                target_modules, device, wrap=lambda batches: batches, static=None,
                compile: bool = False, learning_rates=None):
    """A ``PackedTrainer`` of ``k`` slots of ``method`` (a ``PackedMethod``), each with the
    adapter hyperparameters ``adapter`` (``method.plan_args`` of a configuration), its own seed
    (and learning rate, ``learning_rates[i]``), and ``endless_batches`` of ``batch_size``
    (passed through ``wrap``, e.g. to count their tokens)."""
    from models.hf import load_sequence_classifier
    from models.packed.model import PackedModel
    from models.packed.trainer import PackedTrainer, SlotPlan

    base = load_sequence_classifier(model_dir, num_labels=2, pad_token_id=data.pad_token_id)
    model = PackedModel(base, method=method, capacity=k, target_modules=target_modules,
                        max_rank=max(1, adapter.get("rank", 1))).to(device)
    trainer = PackedTrainer(model, device=device, pad_id=data.pad_token_id, static=static,
                            compile=compile)
    for i in range(k):
        lr = learning_rates[i] if learning_rates else 1e-4
        slot = trainer.attach(SlotPlan(**adapter, learning_rate=lr, weight_decay=0.0,
                                       warmup_ratio=0.0, total_steps=10_000, seed=i))
        trainer.start_epoch(slot, wrap(endless_batches(data, batch_size, i)))
    return trainer


def time_k(*, model_dir: str, data, k: int, batch_size: int, method, adapter: dict,
           target_modules, device, steps: int) -> dict:
    """Aggregate samples/s of ``k`` packed slots (``start_slots``)."""
    trainer = start_slots(model_dir=model_dir, data=data, k=k, batch_size=batch_size,
                          method=method, adapter=adapter, target_modules=target_modules,
                          device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    trainer.step()  # the longest sentences: the peak, and lazy initialisations untimed
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    sync()
    seconds = time.perf_counter() - t0
    return {"k": k, "samples_per_s": steps * k * batch_size / seconds}


def throughput_curve(*, model_dir: str, data, max_k: int, batch_size: int, method,
                     adapter: dict, target_modules, device: str = "cpu", steps: int = 2,
                     share: float = 0.9,
                     say: Callable[[str], None] = print) -> list[dict]:
    """Points {k, samples_per_s} for K = 1, 2, 4, ... up to ``max_k`` (and ``max_k`` itself),
    stopping early once a K falls below ``share`` of the best so far (past the knee) or runs
    out of device memory."""
    dev = torch.device(device)
    ks = sorted({*(2 ** i for i in range(max_k.bit_length()) if 2 ** i <= max_k), max_k})
    curve: list[dict] = []
    for k in ks:
        try:
            point = time_k(model_dir=model_dir, data=data, k=k, batch_size=batch_size,
                           method=method, adapter=adapter, target_modules=target_modules,
                           device=dev, steps=steps)
        except torch.OutOfMemoryError:
            say(f"   probe: K={k} does not fit in the device's memory")
            break
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        say(f"   probe: K={k}: {point['samples_per_s']:.1f} samples/s")
        past_knee = bool(curve) and point["samples_per_s"] < share * max(
            p["samples_per_s"] for p in curve)
        curve.append(point)
        if past_knee:
            break
    return curve


def _child(kwargs: dict, threads: int) -> list[dict]:
    import os
    import warnings

    torch.set_num_threads(max(1, threads))
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return throughput_curve(**kwargs, say=lambda line: print(line, flush=True))


def probe_in_child(*, threads: int, **kwargs) -> list[dict]:
    """``throughput_curve`` in a fresh process: the driver keeps no copy of the model and no
    device context, and the probe's peak memory leaves with it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_child, kwargs, threads).result()
