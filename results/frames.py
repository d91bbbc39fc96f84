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


def read_trials(exp_dir: str | Path) -> list[TrialRecord]:
    """Every trial directory (one holding params.json or result.json) below ``exp_dir``."""
    exp = Path(exp_dir)
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
        # went on: a trial whose last result says it completed did not end in error.
        errored = (d / "error.txt").is_file() and not (rows and rows[-1].get("complete"))
        records.append(TrialRecord(str(trial_id), d, config, rows, errored=errored,
                                   problems=problems))
    return records


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


def _flat_config(config: dict) -> dict:
    return {f"config/{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v)
            for k, v in config.items()}


def epoch_frame(exp_dir: str | Path, records: list[TrialRecord] | None = None) -> pd.DataFrame:
    """One row per trial-epoch: trial_id, config/*, and every metric the trial reported."""
    out = []
    for t in records if records is not None else read_trials(exp_dir):
        for r in t.rows:
            row = {"trial_id": t.trial_id, **_flat_config(t.config)}
            row.update({k: v for k, v in r.items() if k not in _TUNE_NOISE and k != "trial_id"})
            out.append(row)
    return pd.DataFrame(out)


def trial_frame(exp_dir: str | Path, *, metric: str, mode: str = "max",
                records: list[TrialRecord] | None = None) -> pd.DataFrame:
    """One row per trial: config, best and last metrics, epochs run, stopped-early flag,
    trainable params, wall time, seed, git commit and package versions."""
    out = []
    for t in records if records is not None else read_trials(exp_dir):
        row = {"trial_id": t.trial_id, **_flat_config(t.config)}
        max_epochs = t.config.get("max_epochs")
        if not t.rows:
            row.update({"status": "ERROR" if t.errored else "NO_RESULTS", "epochs_run": 0,
                        "stopped_early": False, "patience_stopped": False,
                        "failure": error_reason(t.path) if t.errored else None})
            out.append(row)
            continue
        last = t.rows[-1]
        values = [r.get(metric) for r in t.rows if isinstance(r.get(metric), (int, float))]
        values = [v for v in values if not math.isnan(v)]
        best = (max if mode == "max" else min)(values) if values else float("nan")
        epochs = int(last.get("epoch", last.get("training_iteration", len(t.rows))))
        # A trial that ran out of patience (no better score for some epochs) ended on its own.
        patience = bool(last.get("patience_stop"))
        finished = (max_epochs is not None and epochs >= int(max_epochs)) or patience
        failure = last.get("failure") if isinstance(last.get("failure"), str) else None
        if t.errored and not failure:
            failure = error_reason(t.path)
        row.update({
            "status": "ERROR" if t.errored else "FAILED" if failure else
            ("TERMINATED" if finished else "STOPPED"),
            "failure": failure,
            metric: best,
            "epochs_run": epochs,
            "stopped_early": (not t.errored) and not finished and not failure,  # by ASHA
            "patience_stopped": patience,
            "wall_s": last.get("time_total_s"),
        })
        for k, v in last.items():
            if k in _TUNE_NOISE or k in ("trial_id", metric, "epoch", "training_iteration",
                                          "time_total_s", "patience_stop", "last_epoch",
                                          "complete", "failure"):
                continue
            if k in ("trainable_params", "total_params", "seed", "git_commit", "versions"):
                row[k] = v
            elif isinstance(v, (int, float)):
                row[f"last_{k}"] = v
        out.append(row)
    df = pd.DataFrame(out)
    if len(df) and metric in df:
        df = df.sort_values(metric, ascending=(mode == "min"), na_position="last", kind="stable")
    return df.reset_index(drop=True)


def leaderboard(trials: pd.DataFrame, *, metric: str, top: int = 10) -> pd.DataFrame:
    """The top rows of ``trial_frame`` with the swept values and headline columns only."""
    keep = ["trial_id"] + [c for c in trials.columns if c.startswith("config/") and
                           trials[c].nunique(dropna=False) > 1]
    keep += [c for c in (metric, "last_val_accuracy", "last_val_mcc", "epochs_run",
                         "stopped_early", "trainable_params", "wall_s") if c in trials]
    board = trials[keep].head(top).copy()
    board.columns = [c.removeprefix("config/") for c in board.columns]
    return board
