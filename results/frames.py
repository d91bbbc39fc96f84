"""Read a Ray Tune experiment directory into pandas: one row per trial-epoch and one row per
trial. Reads the trials' ``params.json`` / ``result.json`` files directly, so no Ray is needed
and a damaged directory degrades gracefully (a truncated line drops only that line)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# Columns Tune adds to every result that carry no information about the experiment.
_TUNE_NOISE = {"timestamp", "date", "pid", "hostname", "node_ip", "time_since_restore",
               "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint", "done",
               "time_this_iter_s", "config"}


@dataclass
class TrialRecord:
    trial_id: str
    path: Path
    config: dict
    rows: list[dict]
    errored: bool
    problems: list[str] = field(default_factory=list)


def _read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    rows = []
    if not path.is_file():
        return rows
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            problems.append(f"{path}:{n}: unreadable line dropped")
    return rows


def _dedupe_epochs(rows: list[dict]) -> list[dict]:
    """A trial resumed from an earlier checkpoint re-reports the epochs after it; keep the
    last report of each epoch."""
    if not rows or "epoch" not in rows[0]:
        return rows
    last = {r.get("epoch"): i for i, r in enumerate(rows)}
    return [r for i, r in enumerate(rows) if last[r.get("epoch")] == i]


def tune_statuses(exp_dir: Path) -> dict[str, str]:
    """Tune's last recorded status of each trial (TERMINATED, ERROR, ...), from the newest
    experiment snapshot in ``exp_dir``; {} when there is none or it cannot be read."""
    snapshots = sorted(exp_dir.glob("experiment_state-*.json"))
    if not snapshots:
        return {}
    try:
        state = json.loads(snapshots[-1].read_text())
        out = {}
        for trial_json, _ in state["trial_data"]:
            t = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
            out[str(t["trial_id"])] = str(t["status"])
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def read_trials(exp_dir: str | Path) -> list[TrialRecord]:
    """Every trial directory (one holding params.json or result.json) below ``exp_dir``."""
    exp = Path(exp_dir)
    statuses = tune_statuses(exp)
    records = []
    for d in sorted(p for p in exp.iterdir() if p.is_dir()):
        if not ((d / "params.json").is_file() or (d / "result.json").is_file()):
            continue
        problems: list[str] = []
        try:
            config = json.loads((d / "params.json").read_text())
        except (OSError, json.JSONDecodeError):
            config, problems = {}, [f"{d / 'params.json'}: missing or unreadable"]
        rows = _dedupe_epochs(_read_jsonl(d / "result.json", problems))
        trial_id = rows[0].get("trial_id") if rows else d.name.rsplit("_", 1)[-1]
        if not config and rows:
            config = rows[-1].get("config", {})
        # error.txt also records attempts that Tune retried from a checkpoint and that then
        # went on: a trial that Tune ended as TERMINATED (its scheduler stopped it, or it
        # finished), or whose last result says it completed, did not end in error.
        errored = ((d / "error.txt").is_file() and not (rows and rows[-1].get("complete"))
                   and statuses.get(str(trial_id)) != "TERMINATED")
        records.append(TrialRecord(str(trial_id), d, config, rows, errored=errored,
                                   problems=problems))
    return records


def sweep_times(records: list[TrialRecord]) -> dict:
    """-> {"elapsed_s": first trial start to last result (a resumed sweep's downtime included),
    "active_s": time in which at least one trial was training or evaluating an epoch}. The
    console and the report both print these."""
    spans, starts, ends = [], [], []
    for r in records:
        for row in r.rows:
            ts, total, this = (row.get(k) for k in ("timestamp", "time_total_s",
                                                    "time_this_iter_s"))
            if not isinstance(ts, (int, float)):
                continue
            ends.append(ts)
            if isinstance(total, (int, float)) and not math.isnan(total):
                starts.append(ts - total)
            if isinstance(this, (int, float)) and not math.isnan(this):
                spans.append((ts - this, ts))
    active, reach = 0.0, -math.inf
    for a, b in sorted(spans):  # the union of the epochs' intervals
        if b > reach:
            active += b - max(a, reach)
            reach = b
    return {"elapsed_s": (max(ends) - min(starts)) if starts and ends else None,
            "active_s": active if spans else None}


def error_reason(trial_dir: Path) -> str | None:
    """Why Tune's last attempt of a trial raised, in one line, from its ``error.txt``: the
    memory monitor's verdict (which node, how full) when it killed the worker, else the last
    ``...Error: ...`` line of the traceback."""
    try:
        lines = [ln.strip() for ln in (Path(trial_dir) / "error.txt").read_text(
            errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    memory = [ln for ln in lines if "memory monitor" in ln or ln.startswith("Memory on the node")]
    if memory:
        return " ".join(memory[:2])[:400]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", ln)]
    return (errors[-1] if errors else lines[-1] if lines else "")[:400] or None


# The project's status words (Tune's TERMINATED/STOPPED/ERROR mean different things in
# different places): what happened to a trial, as trials.csv and the report say it.
COMPLETED, STOPPED, FAILED, INTERRUPTED = "completed", "stopped", "failed", "interrupted"
STATUSES = (COMPLETED, STOPPED, FAILED, INTERRUPTED)

# Per-epoch time columns: the trial table keeps one time column (wall_s), epochs.csv has these.
_EPOCH_TIMES = {"elapsed_s", "train_s", "epoch_s", "mean_train_s"}
# Result keys that are bookkeeping, kept out of both tables.
_BOOKKEEPING = {"complete", "last_epoch", "patience_stop", "training_iteration", "node_id",
                "failure"}


def hyperparameters(exp_dir: str | Path, records: list[TrialRecord]) -> list[str]:
    """The swept (or --space-fixed) dimensions: the search space recorded in
    ``experiment.json``; without it, every config key the trials have (internals included)."""
    try:
        record = json.loads((Path(exp_dir) / "experiment.json").read_text())
    except (OSError, ValueError):  # missing, unreadable, not JSON (UnicodeDecodeError too)
        record = None
    space = record.get("space") if isinstance(record, dict) else None
    if space and isinstance(space, dict):
        return list(space)
    names: dict[str, None] = {}
    for t in records:
        names.update(dict.fromkeys(k for k in t.config if not k.startswith("_")))
    return list(names)


def _params(config: dict, names: list[str]) -> dict:
    return {k: (json.dumps(config[k]) if isinstance(config.get(k), (list, dict))
                else config.get(k)) for k in names}


def epoch_frame(exp_dir: str | Path, records: list[TrialRecord] | None = None, *,
                params: list[str] | None = None) -> pd.DataFrame:
    """One row per trial-epoch: trial_id, the hyperparameters (named as in the space), and
    every metric the trial reported that epoch."""
    records = records if records is not None else read_trials(exp_dir)
    names = params if params is not None else hyperparameters(exp_dir, records)
    out = []
    for t in records:
        for r in t.rows:
            row = {"trial_id": t.trial_id, **_params(t.config, names)}
            row.update({k: v for k, v in r.items() if k not in _TUNE_NOISE and
                        k not in _BOOKKEEPING and k not in ("trial_id", "time_total_s")})
            out.append(row)
    return pd.DataFrame(out)


def trial_frame(exp_dir: str | Path, *, metric: str, mode: str = "max",
                records: list[TrialRecord] | None = None,
                params: list[str] | None = None) -> pd.DataFrame:
    """One row per trial (the README's data dictionary lists the columns): status, the
    hyperparameters named as in the space, the best of every best-so-far metric, the last
    epoch's other metrics (``last_*``), epochs run, wall time, peak memory, trainable params,
    seed, git commit and versions. Sorted best first by ``metric``."""
    records = records if records is not None else read_trials(exp_dir)
    names = params if params is not None else hyperparameters(exp_dir, records)
    out = []
    for t in records:
        row = {"trial_id": t.trial_id}
        if not t.rows:
            row.update({"status": FAILED if t.errored else INTERRUPTED,
                        "failure": error_reason(t.path) if t.errored else None,
                        **_params(t.config, names), "epochs_run": 0, "patience_stopped": False})
            out.append(row)
            continue
        last = t.rows[-1]
        values = [r.get(metric) for r in t.rows if isinstance(r.get(metric), (int, float))]
        values = [v for v in values if not math.isnan(v)]
        best = (max if mode == "max" else min)(values) if values else float("nan")
        epochs = int(last.get("epoch", last.get("training_iteration", len(t.rows))))
        # A trial that ran out of patience (no better score for some epochs) ended on its own.
        patience = bool(last.get("patience_stop"))
        max_epochs = t.config.get("max_epochs")
        finished = (max_epochs is not None and epochs >= int(max_epochs)) or patience
        failure = last.get("failure") if isinstance(last.get("failure"), str) else None
        if t.errored and not failure:
            failure = error_reason(t.path)
        row.update({"status": FAILED if (t.errored or failure) else
                    COMPLETED if finished else STOPPED,
                    "failure": failure, **_params(t.config, names), metric: best,
                    "epochs_run": epochs, "patience_stopped": patience,
                    "wall_s": last.get("time_total_s")})
        for k, v in last.items():
            if (k in _TUNE_NOISE or k in _BOOKKEEPING or k in _EPOCH_TIMES or k in row
                    or k in ("trial_id", "epoch", "time_total_s", "peak_mem_mb",
                             "train_mem_mb")):
                continue
            if k in ("trainable_params", "total_params", "seed", "git_commit", "versions"):
                row[k] = v
            elif k == "max_peak_mem_mb":
                row["peak_mem_mb"] = v
            elif k == "max_train_mem_mb":
                row["train_mem_mb"] = v
            elif k.startswith("best_") and isinstance(v, (int, float)):
                row[k] = v  # best so far at the last epoch = the trial's best
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"last_{k}"] = v
        out.append(row)
    df = pd.DataFrame(out)
    if len(df) and metric in df:
        df = df.sort_values(metric, ascending=(mode == "min"), na_position="last", kind="stable")
    return df.reset_index(drop=True)


def leaderboard(trials: pd.DataFrame, *, metric: str, params: list[str] | None = None,
                top: int = 10) -> pd.DataFrame:
    """The top rows of ``trial_frame``: status, the hyperparameters among ``params`` whose
    values differ between trials, and the headline columns."""
    keep = ["trial_id", "status"] + [c for c in (params or []) if c in trials and
                                     trials[c].nunique(dropna=False) > 1]
    keep += [c for c in (metric, "last_val_accuracy", "last_val_mcc", "epochs_run",
                         "trainable_params", "wall_s") if c in trials]
    return trials[keep].head(top).copy()
