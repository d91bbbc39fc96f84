"""The command line every study shares: flags, validation before anything starts, the plan,
then sweep -> result tables -> retrain. A study's script supplies only its own flags and how
to load its data and model (see ``search/cola_lora.py``).

Bad input exits 2 before Ray starts and before anything is written."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from models.errors import InputError
from results.storage import (default_mirror, display, is_uri, open_remote, pull_own_files,
                             pull_tune_files, push_own_files)
from search.algorithms import OPTUNA_BACKED, resolve
from search.checks import (_check_experiment_dir, _check_same_search, _check_same_study,
                           _database_error, _masked, check_optuna_storage, check_storage,
                           search_metric)
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
    try:
        return _run(study_name, args, prepare,
                    variants or (lambda a: {"": Variant(study_name, {})}))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        import ray

        if ray.is_initialized():  # started or connected to; a cluster we joined keeps running
            ray.shutdown()


def _run(study_name, args, prepare, variants) -> int:
    """Defaults, checks, the plans, then each sweep and its retrain (the order the module
    docstring gives); 116 lines, most of them the checks before anything is written, kept in
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
    name = args.name or study_name
    chosen = variants(args)
    search_metrics = {v.study: search_metric(get_study(v.study), args.metric)
                      for v in chosen.values()}
    warm_study = (check_study(args.warm_start, list(search_metrics))
                  if args.warm_start and not args.resume else None)
    names = {suffix: name + suffix for suffix in chosen}
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
        if args.resume:
            for plan in plans:
                _check_same_search(plan, args)
                _check_same_study(plan, prepared.describe)
        # --- validation done: from here on we write ---
        for plan in plans:
            plan.exp_dir.mkdir(parents=True, exist_ok=True)
            if remote is not None and args.resume:  # maybe another machine: fetch what it lacks
                pull_own_files(remote, plan.name, plan.exp_dir)
        if prepared.finalize:
            exp_dir.mkdir(parents=True, exist_ok=True)
            prepared.finalize(exp_dir)

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
    outcomes = []
    try:
        for plan in plans:
            print_plan(plan, prepared, res)
            record = _record(plan, name, args, prepared, res, memory_note.get(plan.name),
                             trackers, provenance())
            if not (plan.exp_dir / "experiment.json").exists():
                (plan.exp_dir / "experiment.json").write_text(
                    json.dumps(record, indent=1, default=str))
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


def _sweep_and_retrain(plan, prepared: Prepared, prov: dict):
    from search import retrain as retraining
    from search import sweep

    try:
        grid = sweep.build_tuner(plan, prepared.data, prov, callbacks=[sweep.progress(plan)],
                                 verbose=int(plan.verbose)).fit()
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
        print(f"\nSweep interrupted after {sum(s == 'TERMINATED' for s in statuses.values())} "
              f"finished trials; continue with the same command plus --resume", flush=True)
        return 130, None
    print_leaderboard(plan, trials)
    if not plan.retrain_top_k:
        return 0, None
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


def copy_tree(src: Path, dst: Path) -> None:
    if not dst.exists():
        shutil.copytree(src, dst)
