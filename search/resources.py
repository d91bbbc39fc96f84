"""Resources before anything starts: GPUs asked against GPUs found, joining a cluster
(--address), what one machine or the cluster offers, and how many trials fit in memory."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.errors import InputError
from results.storage import is_uri
from search.output import QUIET_ENV

if TYPE_CHECKING:  # annotations only
    from search.prepared import Prepared


def check_gpus(asked: int | None) -> tuple[int, int]:
    import torch

    found = torch.cuda.device_count()
    if asked is None:
        return found, found
    if asked > found:
        raise InputError(f"--gpus {asked}: asked for {asked} GPUs, found {found}")
    return asked, found


@dataclass
class Resources:
    gpus: int  # GPUs this command uses
    found: int  # GPUs present (this machine, or the cluster)
    cpus: int  # CPUs available to trials
    nodes: int = 1
    address: str | None = None  # the cluster joined with --address


def connect(address: str):
    """Join a running cluster, shipping this project's packages to every node with the job's
    runtime environment (workers import the same code as the driver)."""
    import ray

    import models
    import results
    import search
    import spaces

    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and "://" not in address:
        # Ray retries an unreachable address for minutes; one quick probe answers at once.
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as e:
            raise InputError(f"--address {address!r}: could not connect to a Ray cluster "
                             f"(nothing answers at {host}:{port}: {e.strerror or e})") from None
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=True,
                 logging_level=os.environ.get("PEFT_SWEEPS_RAY_LOG_LEVEL", "WARNING"),
                 runtime_env={"py_modules": [models, spaces, results, search],
                              "env_vars": {k: os.environ[k] for k in QUIET_ENV}})
    except Exception as e:  # ConnectionError, timeouts, auth
        raise InputError(f"--address {address!r}: could not connect to a Ray cluster "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                         ) from None
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return int(total.get("GPU", 0)), int(total.get("CPU", 0)), len(nodes)


def _check_resources(args) -> Resources:
    if args.reduction_factor <= 1:
        raise InputError(f"--reduction-factor {args.reduction_factor}: must be > 1")
    if args.grace_period > args.max_epochs:
        raise InputError(f"--grace-period {args.grace_period}: must be <= --max-epochs "
                         f"({args.max_epochs})")
    if args.address:
        found, cpus, nodes = connect(args.address)
        where = f"in the cluster at {args.address}"
        if args.gpus is not None and args.gpus > found:
            raise InputError(f"--gpus {args.gpus}: asked for {args.gpus} GPUs, found {found} {where}")
        res = Resources(found if args.gpus is None else args.gpus, found, cpus, nodes, args.address)
        if nodes > 1 and not is_uri(args.storage_path) and not args.storage_is_shared:
            raise InputError(
                f"--storage-path {args.storage_path!r} is a local path of this machine, but the "
                f"cluster has {nodes} nodes and every node writes results and checkpoints there: "
                "use cloud storage (s3://bucket/path, gs://...), or a shared file system mounted "
                "at the same path on every node and pass --storage-is-shared")
    else:
        gpus, found = check_gpus(args.gpus)
        where = "on this machine"
        res = Resources(gpus, found, os.cpu_count() or 1)
    if args.cpus_per_trial > res.cpus:
        raise InputError(f"--cpus-per-trial {args.cpus_per_trial}: only {res.cpus} CPUs {where}")
    if res.gpus and args.gpus_per_trial > res.gpus:
        raise InputError(f"--gpus-per-trial {args.gpus_per_trial}: more than --gpus {res.gpus}")
    return res


def plan_memory(plans: list, prepared: Prepared, args, res: Resources,
                available: int | None = None) -> dict:
    """Give every plan a memory per trial and no more trials at once than fit in memory. A
    plan whose batch does not fit in ``available`` bytes (default: what this machine, or the
    cluster, offers) runs it in micro-batches, with gradient checkpointing where that is not
    enough and the study has it (``search.memory.fit_batch``): the change goes into the plan's
    fixed config, so every trial and retrain runs with it. InputError when not even that fits.
    -> what was planned, for experiment.json."""
    from search import memory

    avail = memory.available_bytes(res.address) if available is None else available
    notes = {}
    for plan in plans:
        changes = {}
        if args.memory_per_trial:
            est = memory.Estimate(int(args.memory_per_trial * memory.GIB), "--memory-per-trial")
        elif prepared.memory is not None:
            est, changes = memory.fit_batch(plan.study, plan.space, plan.fixed, prepared.memory,
                                            avail)
        else:
            continue
        fit = int(avail // est.bytes)
        fitted = _fitted(plan, changes)
        if fit < 1:
            even = f" even {fitted}" if fitted else ""
            raise InputError(
                f"a trial needs about {est.gib:.1f} GiB{even} ({est.basis}) but "
                f"{avail / memory.GIB:.1f} GiB are available: lower the "
                f"{'token limits' if fitted else 'batch size or the token limits'}, use a "
                "smaller model, or set --memory-per-trial if the estimate is too high")
        plan.fixed.update(changes)
        plan.memory_per_trial = est.bytes
        plan.concurrency = min(plan.concurrency, fit)
        notes["_available_bytes"] = avail
        plan.memory_note = notes[plan.name] = {
            "per_trial_gib": round(est.gib, 2), "basis": est.basis,
            "available_gib": round(avail / memory.GIB, 1), "fit": fit,
            **({**changes, "fitted": fitted} if changes else {})}
        if plan.pack > 1 and prepared.packed_memory is not None:
            _plan_packed(plan, prepared, avail)
    return notes


def _plan_packed(plan, prepared: Prepared, avail: int) -> None:
    """The engine's memory, the base counted once, and each packed trial's own small process:
    K slots, or as many as fit (said); with --pack auto, the knee of the probed throughput
    curve up to what fits."""
    from search import memory

    client = memory.PACKED_CLIENT

    def need(k: int):
        est = prepared.packed_memory(plan.study, plan.space, plan.fixed, k)
        return est, est.bytes + k * client

    k = next((k for k in range(plan.pack, 0, -1) if need(k)[1] <= avail), 0)
    if k == 0:
        raise InputError(f"--pack {'auto' if plan.pack_auto else plan.pack}: not even one "
                         f"packed trial fits ({need(1)[0].basis}; "
                         f"{avail / memory.GIB:.1f} GiB available)")
    if k < plan.pack and not plan.pack_auto:
        print(f"--pack {plan.pack}: {k} packed trials fit in {avail / memory.GIB:.1f} GiB "
              f"({need(k)[0].basis}; and {client / memory.GIB:.1f} GiB a trial process); "
              f"packing {k}", flush=True)
    probe = None
    if plan.pack_auto:
        from search.packing import probe_slots

        k, probe = probe_slots(plan, prepared.data, k,
                               prepared.model_while_planning or plan.fixed["model"])
        if k < 2:
            print("--pack auto: one slot does as well as any K measured (the step is bound by "
                  "compute, not per-operator cost): the trials run unpacked, one process each",
                  flush=True)
            plan.pack, plan.total_cpus = 1, 0
            plan.memory_note["packed"] = {"slots": 1, "probe": probe}
            return
        print(f"--pack auto: packing {k} (the fewest slots within 10% of the best aggregate "
              "samples/s measured)", flush=True)
    est = need(k)[0]
    plan.pack = plan.concurrency = k
    plan.engine_memory, plan.client_memory = est.bytes, client
    plan.memory_note["packed"] = {"slots": k, "engine_gib": round(est.gib, 2),
                                  "trial_process_gib": round(client / memory.GIB, 2),
                                  "basis": est.basis,
                                  **({"probe": probe} if probe is not None else {})}


def _fitted(plan, changes: dict) -> str:
    """The plan's change to fit in memory, in words (empty: none)."""
    from search.memory import largest_batch

    rows = changes.get("micro_batch_size")
    batch = largest_batch(plan.study, plan.space, plan.fixed)
    split = (f"with batches of up to {batch} rows run as {-(-batch // rows)} micro-batches of "
             f"at most {rows} row{'s' if rows > 1 else ''} (gradients accumulated: the same "
             "optimizer steps)" if rows else "")
    ckpt = "with gradient checkpointing" if changes.get("gradient_checkpointing") else ""
    return " and ".join(x for x in (split, ckpt) if x)
