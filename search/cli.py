"""The command line every study shares: flags, validation before anything starts, the plan,
then sweep -> result tables -> retrain. A study's script supplies only its own flags and how
to load its data and model (see ``search/cola_lora.py``).

Bad input exits 2 before Ray starts and before anything is written."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from models.errors import InputError
from search import signals
from results.storage import (default_mirror, display, is_uri, open_remote, pull_own_files,
                             pull_tune_files, push_own_files)
from search.algorithms import OPTUNA_BACKED, resolve
from search.claim import check_name, claim
from search.disk import copy_tree, is_disk_full, plan_disk, tree_bytes, write_text  # noqa: F401 (copy_tree: the studies')
from search.checks import (_check_experiment_dir, _check_same_search, _check_same_study,
                           _database_error, _masked, check_optuna_storage, check_same_flags,
                           check_storage, search_metric)
from search.flags import DEFAULTS, SMOKE_DEFAULTS
from search.output import (print_leaderboard, print_plan, print_retrain, quiet_libraries,
                           quiet_ray, write_tables)
from search.plan import _plan, _record
from search.prepared import Prepared, Variant
from search.redact import refuse_credentials_in_uri
from search.resources import _check_resources, plan_memory
from search.warm_start import check_study


def run(study_name: str, argv: list[str] | None, parser: argparse.ArgumentParser,
        prepare: Callable[[argparse.Namespace, Path, Path], Prepared],
        variants: Callable[[argparse.Namespace], dict[str, Variant]] | None = None) -> int:
    """Parse, validate, plan, sweep, retrain. Returns the exit code.

    ``variants(args)`` -> {experiment-name suffix: Variant}: one sweep each, with the same
    budget (e.g. distillation and its from-scratch baseline, or one sweep per summarization
    method). Default: one sweep of ``study_name``; ``study_name`` also names the experiment."""
    quiet_libraries()
    args = parser.parse_args(argv)
    quiet_ray(args.verbose)
    previous = signals.install()
    try:
        with contextlib.ExitStack() as held:  # the experiment locks, released on any exit
            code = _run(study_name, args, prepare,
                        variants or (lambda a: {"": Variant(study_name, {})}), held)
        return signals.interrupted_code() if code == 130 else code
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (a full disk is explained; anything else re-raised)
        if not is_disk_full(e):
            raise
        print(f"\nerror: the storage filled up while the sweep ran ({' '.join(str(e).split())[:200]}"
              f"); what was written is kept: free space under {args.storage_path}, then run the "
              "same command plus --resume", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # outside Tune's own handling: while loading, between phases
        print("\ninterrupted; finished trials and retrains are kept: run the same command plus "
              "--resume to continue (a sweep that had not started has nothing to resume: run "
              "the command again)", file=sys.stderr, flush=True)
        return signals.interrupted_code()
    finally:
        import ray

        if ray.is_initialized():  # started or connected to; a cluster we joined keeps running
            ray.shutdown()
        signals.restore(previous)


def _run(study_name, args, prepare, variants, held: contextlib.ExitStack) -> int:
    """Defaults, checks, the plans, then each sweep and its retrain (the order the module
    docstring gives); ~120 lines, most of them the checks before anything is written, kept in
    one place so that the point after which files are written stays visible."""
    from models.provenance import provenance
    from models.registry import get_study

    defaults = (getattr(args, "_smoke_defaults", SMOKE_DEFAULTS) if args.smoke_test
                else getattr(args, "_defaults", DEFAULTS))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.storage_path is None:
        args.storage_path = "ray_results/smoke" if args.smoke_test else "ray_results"
    if args.smoke_test and args.gpus is None:
        args.gpus = 0
    if args.local_mirror and not is_uri(args.storage_path):
        raise InputError(f"--local-mirror {args.local_mirror!r}: only for a cloud --storage-path "
                         f"(s3://..., gs://...), not {args.storage_path!r}")
    res = _check_resources(args)
    signals.install()  # again: joining a cluster (--address) ran ray.init, which sets its own
    gpus, cpus = res.gpus, res.cpus
    remote = None
    if is_uri(args.storage_path):
        # Tune writes to the bucket; this driver's own files go to a local mirror, then there.
        refuse_credentials_in_uri(args.storage_path, "--storage-path")
        remote = open_remote(args.storage_path)
        mirror = args.local_mirror or str(default_mirror(args.storage_path))
        try:
            storage = check_storage(mirror)
        except InputError as e:
            raise InputError(str(e).replace("--storage-path", "--local-mirror", 1)) from None
    else:
        storage = check_storage(args.storage_path)
    check_optuna_storage(args.optuna_storage)
    trackers = None
    if args.log_to:
        from search.tracking import resolve as resolve_tracking

        trackers = resolve_tracking(args.log_to, mlflow_uri=args.mlflow_tracking_uri,
                                    wandb_project=args.wandb_project, storage=str(storage))
    searcher, scheduler = resolve(args.searcher, args.scheduler)
    name = check_name(study_name if args.name is None else args.name)
    chosen = variants(args)
    search_metrics = {v.study: search_metric(get_study(v.study), args.metric)
                      for v in chosen.values()}
    warm_study = (check_study(args.warm_start, list(search_metrics))
                  if args.warm_start and not args.resume else None)
    names = {suffix: name + suffix for suffix in chosen}
    # Claimed before any work, so that a second sweep of the same name stops here.
    held.enter_context(claim(storage, [name, *names.values()], resume=args.resume))
    for n in names.values():
        _check_experiment_dir(storage / n, args.resume, remote)
    exp_dir = storage / name  # the main experiment; study artefacts (smoke models) live here

    with tempfile.TemporaryDirectory(prefix="sweep-prep-") as scratch:
        # The study loads and checks its data and model here; smoke-test artefacts go to
        # scratch first, so that failing validation leaves nothing behind.
        prepared = prepare(args, Path(scratch), exp_dir)
        gpus_per_trial = args.gpus_per_trial if gpus else 0.0
        concurrency = int(min(cpus // args.cpus_per_trial,
                              gpus // gpus_per_trial if gpus else math.inf))
        if concurrency < 1:
            raise InputError("no trial fits: lower --cpus-per-trial or --gpus-per-trial")
        all_dims = set().union(*(get_study(v.study).space for v in chosen.values()))
        plans = [_plan(args, suffix, variant, prepared=prepared, res=res, storage=storage,
                       remote=remote, names=names, all_dims=all_dims, searcher=searcher,
                       scheduler=scheduler, search_metrics=search_metrics,
                       warm_study=warm_study, concurrency=concurrency,
                       gpus_per_trial=gpus_per_trial, trackers=trackers)
                 for suffix, variant in chosen.items()]
        memory_note = plan_memory(plans, prepared, args, res)
        if remote is None:  # a bucket's quota is not ours to read; its mirror holds little
            note = plan_disk(plans, prepared.trainable, tree_bytes(Path(scratch)), storage,
                             resume=args.resume)
            for plan in plans:
                plan.disk_note = note
        if args.resume:
            for plan in plans:
                _check_same_search(plan, args)
                _check_same_study(plan, prepared.describe)
                check_same_flags(plan.exp_dir, args)
        # --- validation done: from here on we write ---
        records = {plan.name: _record(plan, name, args, prepared, res,
                                      memory_note.get(plan.name), trackers, provenance())
                   for plan in plans}
        if not _write_experiments(plans, records, exp_dir=exp_dir, remote=remote,
                                  resume=args.resume, finalize=prepared.finalize):
            return 1

    import ray

    if not res.address:
        # Ray's own memory resource would be what is available less its object store (30 %
        # of RAM), less than the plan's count: give it the planned figure instead.
        planned = {"_memory": int(memory_note["_available_bytes"])} if memory_note else {}
        # "local": a new Ray of our own, never a cluster someone started with `ray start` on
        # this machine (Ray would join it, and refuse num_cpus there); --address joins one.
        ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False,
                 log_to_driver=True, configure_logging=True,
                 logging_level=os.environ.get("PEFT_SWEEPS_RAY_LOG_LEVEL", "WARNING"), **planned)
    signals.install()  # over the handler ray.init set (see search/signals.py)
    outcomes = []
    try:
        for plan in plans:
            if signals.stop_requested():  # between one method's sweep and the next
                return 130
            print_plan(plan, prepared, res)
            push(plan, plan.exp_dir / "experiment.json")
            code, summary = _sweep_and_retrain(plan, prepared, provenance())
            if code:
                return code
            outcomes.append((plan, summary))
        if prepared.after:
            prepared.after(outcomes)
    finally:
        if remote is not None:  # also after an interruption: what exists is worth keeping
            for n in {name, *names.values()}:
                print(f"pushing {n} to {display(remote, storage, n)} ...", flush=True)
                push_own_files(remote, n, storage / n)
        ray.shutdown()  # on a cluster: disconnects; the cluster keeps running
    return 0


def _write_experiments(plans, records: dict, *, exp_dir: Path, remote, resume: bool,
                       finalize) -> bool:
    """The first writes, all or nothing: the experiment folders (and, resuming from cloud
    storage, what this machine's mirror lacks), the study's files (``finalize``) and each
    ``experiment.json``. On a full disk, what this run created is removed and the message says
    what to do (-> False): a half-made folder would make the same command refuse to start."""
    new_dirs = [d for d in dict.fromkeys([*(p.exp_dir for p in plans), exp_dir])
                if not d.exists()]
    try:
        for plan in plans:
            plan.exp_dir.mkdir(parents=True, exist_ok=True)
            if remote is not None and resume:  # maybe another machine: fetch what it lacks
                pull_own_files(remote, plan.name, plan.exp_dir)
        if finalize:
            exp_dir.mkdir(parents=True, exist_ok=True)
            finalize(exp_dir)
        for plan in plans:
            if not (plan.exp_dir / "experiment.json").exists():
                write_text(plan.exp_dir / "experiment.json",
                           json.dumps(records[plan.name], indent=1, default=str))
    except OSError as e:
        if not is_disk_full(e):
            raise
        for d in new_dirs:  # nothing half-made stays: the same command starts afresh
            shutil.rmtree(d, ignore_errors=True)
        need = plans[0].disk_note.get("need_mb")
        print(f"error: the storage at {exp_dir.parent} is full ({e.strerror or e}) while the "
              "experiment was being set up; nothing of it was kept: free space there"
              + (f" (the plan counted about {need:,.0f} MB)" if need else "")
              + " and run the same command again", file=sys.stderr, flush=True)
        return False
    return True


def _sweep_and_retrain(plan, prepared: Prepared, prov: dict):
    from search import retrain as retraining
    from search import sweep

    from search import packing

    try:
        with signals.tune_fit(), packing.engine(plan, prepared.data) as engine:
            grid = sweep.build_tuner(plan, prepared.data, prov,
                                     callbacks=[sweep.progress(plan)],
                                     verbose=int(plan.verbose), engine=engine).fit()
    except Exception as e:  # noqa: BLE001  (only a storage failure is handled; others re-raise)
        cause = _database_error(e)
        if cause is None:
            raise
        from search.redact import redact_text

        print(f"\nthe Optuna storage {_masked(plan.optuna_url)} stopped answering "
              f"({redact_text(' '.join(str(cause).split())[:240], plan.optuna_url)}); the sweep "
              "stopped. Finished trials are kept: once the database is back, run the same "
              "command plus --resume", file=sys.stderr, flush=True)
        write_tables(plan)
        return 1, None
    finished, statuses = sweep.sweep_finished(plan, grid)
    if plan.remote is not None:  # the tables are built from Tune's files
        pull_tune_files(plan.remote, plan.name, plan.exp_dir)
    interrupted = set()
    if not finished:
        # Which trials the interrupt cut short: the experiment snapshot says (Tune's in-memory
        # statuses mark the trials it stopped on the interrupt TERMINATED too).
        where = sweep._storage(plan, plan.name)
        snapshot = sweep.trial_statuses(where["storage_path"], where.get("storage_filesystem"))
        interrupted = {t for t, st in snapshot.items() if st not in ("TERMINATED", "ERROR")}
    trials, _ = write_tables(plan, known=set(statuses), interrupted=interrupted)
    if finished and plan.resume and plan.searcher in OPTUNA_BACKED:
        from search.optuna_search import fail_orphans

        recorded = json.loads((plan.exp_dir / "experiment.json").read_text())
        fail_orphans(plan.optuna_url, recorded.get("optuna_study") or plan.optuna_study_name,
                     set(statuses))
    if plan.remote is not None:
        push_own_files(plan.remote, plan.name, plan.exp_dir)
    if not finished:
        # Counted from the tables: Tune's own statuses call the trials it cut short TERMINATED.
        from results.frames import COMPLETED, FAILED, INTERRUPTED, STOPPED

        n = {st: int((trials["status"] == st).sum()) if "status" in trials else 0
             for st in (COMPLETED, STOPPED, FAILED, INTERRUPTED)}
        print(f"\nSweep interrupted after {n[COMPLETED] + n[STOPPED]} finished trials "
              f"({n[COMPLETED]} ran to the end, {n[STOPPED]} cut by the scheduler; "
              f"{n[FAILED]} failed, {n[INTERRUPTED]} cut short by the interrupt); continue with "
              "the same command plus --resume",
              flush=True)
        return 130, None
    print_leaderboard(plan, trials)
    if not plan.retrain_top_k:
        return 0, None
    if signals.stop_requested():  # came as the sweep ended
        print("\nInterrupted before the retrain; run the same command plus --resume to "
              "retrain", flush=True)
        return 130, None
    runs, complete = retraining.retrain(plan, trials, prepared.data, prov)
    hp = list(plan.space)
    summary = retraining.summarize_retrain(runs, hp, plan.study.report_columns)
    runs.to_csv(plan.exp_dir / "retrain_runs.csv", index=False)
    summary.to_csv(plan.exp_dir / "retrain.csv", index=False)
    print_retrain(summary, hp, plan, split=prepared.report_split,
                  baseline=(prepared.extra.get("majority_baseline") or {}).get("dev_accuracy"))
    if plan.remote is not None:
        push_own_files(plan.remote, plan.name, plan.exp_dir)
    return (0 if complete else 130), summary


def push(plan, path: Path) -> None:
    """One file of the mirror to the bucket at once (no-op for local storage)."""
    if plan.remote is not None:
        plan.remote.push(path, plan.name, *path.relative_to(plan.exp_dir).parts)


