"""One sweep's plan and record: the SweepPlan of each variant a command runs (its space with
--space applied and checked against the study's config, the fixed config, the search, the
resources) and what experiment.json records about it."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from results.storage import display
from search.algorithms import describe, startup_trials
from search.checks import _masked, check_batch_fits, parse_objectives
from search.flags import apply_space_overrides, study_flags, validate_space
from search.redact import redact_argv
from models.errors import InputError
from search.warm_start import warm_start_points
from spaces.dims import Choice, Fixed

if TYPE_CHECKING:  # annotations only
    from search.prepared import Prepared, Variant


def _record(plan, name: str, args, prepared: Prepared, res, memory: dict | None, trackers,
            prov: dict) -> dict:
    """What experiment.json records about one sweep: the command (credentials redacted), the
    search, the space and fixed config, the plan, where it lives, and the provenance."""
    return {"study": plan.study.name, "group": name,
              "command": shlex.join(redact_argv([sys.argv[0], *sys.argv[1:]])),
              "metric": plan.study.metric, "mode": plan.study.mode,
              "searcher": plan.searcher, "scheduler": plan.scheduler,
              "search_seed": plan.seed, "search": describe(plan),
              "report_split": prepared.report_split or plan.study.report_split,
              "retrain_weights": plan.study.retrain_weights,
              "search_metric": plan.metric, "search_mode": plan.mode,
              "objectives": plan.objectives,
              "warm_start": ({"from": str(args.warm_start), "points": plan.warm_start}
                             if plan.warm_start else None),
              "space": {k: v.describe() for k, v in plan.space.items()},
              "flags": study_flags(args),  # what --resume compares (search.flags.declare)
              "fixed": plan.fixed, "num_samples": plan.num_samples,
              "concurrency": plan.concurrency, "pack": plan.pack, "memory": memory, "disk": plan.disk_note or None,
              "gpus": res.gpus, "gpus_per_trial": plan.gpus_per_trial,
              "cpus_per_trial": args.cpus_per_trial, **prepared.describe,
              "optuna_storage": _masked(plan.optuna_url),
              "optuna_study": plan.optuna_study_name,
              "max_epochs": plan.max_epochs, "grace_period": plan.grace_period,
              "startup_trials": startup_trials(plan),
              "reduction_factor": plan.reduction_factor,
              "max_failures": plan.max_failures, "address": res.address,
              "storage": display(plan.remote, plan.storage_path, plan.name),
              "nodes": res.nodes, **prepared.extra,
              **(trackers.describe() if trackers else {}),
              **prov}


def _plan(args, suffix: str, variant: Variant, *, prepared: Prepared, res, storage: Path,
          remote, names: dict, all_dims: set, searcher: str, scheduler: str,
          search_metrics: dict, warm_study: str | None, concurrency: int,
          gpus_per_trial: float, trackers):
    """One variant's SweepPlan: its space (--space applied, every dimension checked against the
    study's config), the fixed config, the search and the resources."""
    from models.registry import get_study
    from search import sweep

    study = get_study(variant.study)
    fields = study.config_cls.field_names()
    space = {**apply_space_overrides(study.space, args.space, set(study.space),
                                     skip=all_dims),
             **variant.overrides}
    if all(isinstance(d, Fixed) for d in space.values()):
        # Nothing to search: the searcher gets the given configuration as a one-value
        # choice per dimension, and one trial evaluates it.
        space = {k: Choice((d.value,)) for k, d in space.items()}
        args.num_samples = 1
        print("every search dimension is fixed by --space: one trial evaluates that "
              "configuration (--num-samples 1)", flush=True)
    fixed = {**prepared.fixed, "max_epochs": args.max_epochs, "seed": args.seed,
             "num_threads": args.cpus_per_trial, "compile": args.compile,
             "group_by_length": not args.no_length_grouping}
    fixed = {k: v for k, v in fixed.items() if k not in space and k in fields}
    validate_space(space, study.config_cls, fixed)
    check_batch_fits(space, prepared.train_rows)
    points = (warm_start_points(args.warm_start, study.metric, study.mode, space,
                                args.warm_start_top)
              if study.name == warm_study else [])
    from search.packing import packable

    from search.packing import AUTO_MAX

    auto = args.pack == "auto"
    if auto and args.address:
        raise InputError("--pack auto: the probe times packed steps on this machine, not on a "
                         "cluster's nodes; give --pack K with --address")
    asked = min(args.num_samples, AUTO_MAX) if auto else args.pack
    pack = asked if packable(study) else 1
    if (auto or asked > 1) and pack == 1:
        print(f"--pack {args.pack}: {study.name} cannot be packed yet; its trials run "
              "unpacked, one process each", flush=True)
    if pack > 1 and not auto:  # the engine's slots bound the trials at once (auto: once the
        concurrency = pack  # probe has picked them, search.resources); the engine has every CPU
    metric, mode = search_metrics[study.name]
    objectives = parse_objectives(args.objectives, study, searcher, scheduler,
                                  args.warm_start)
    if objectives:
        metric, mode = objectives[0]
    return sweep.SweepPlan(
        searcher=searcher, scheduler=scheduler, metric=metric, mode=mode,
        warm_start=points, node_cpus=0 if res.address else res.cpus,
        study=study, storage_path=storage, name=names[suffix], space=space, fixed=fixed,
        num_samples=args.num_samples, max_epochs=args.max_epochs,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        startup_trials=args.startup_trials, seed=args.seed, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=gpus_per_trial,
        concurrency=concurrency, retrain_top_k=args.retrain_top_k, pack=pack,
        pack_auto=auto and pack > 1,
        total_cpus=res.cpus if pack > 1 else 0,
        retrain_seeds=args.retrain_seeds, resume=args.resume,
        max_failures=args.max_failures, reuse_actors=res.address is None,
        remote=remote, verbose=args.verbose,
        optuna_storage=args.optuna_storage, tracking=trackers, objectives=objectives,
        # In a shared database, one study per run.
        optuna_study=f"{names[suffix]}-{time.strftime('%Y%m%d-%H%M%S')}"
        if args.optuna_storage else None)
