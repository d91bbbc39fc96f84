"""Command line of ``results``:

    python -m results report EXPERIMENT_DIR [EXPERIMENT_DIR ...] [--out DIR] [--strict]

Writes ``report.md`` and its PNG figures. An EXPERIMENT_DIR may be cloud storage
(``s3://bucket/path/<name>``): it is fetched without checkpoints into the local mirror first,
and the report is also written back to ``<uri>/report``. A damaged directory is described in the report;
``--strict`` makes any such problem exit 1. A path that is not an experiment exits 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    """Parse, check every EXPERIMENT_DIR (fetching cloud ones) before writing, build the
    report, push it back to the cloud. One sequence (~65 lines); bad input exits 2 first."""
    p = argparse.ArgumentParser(prog="python -m results", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="Markdown + PNG report of one or more experiment dirs",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("experiments", nargs="+", metavar="EXPERIMENT_DIR",
                   help="experiment directories (<storage-path>/<name>) of any study; local "
                        "paths or s3://, gs:// URIs")
    r.add_argument("--out", default=None,
                   help="where report.md and the PNGs go (default: <first experiment>/report)")
    r.add_argument("--strict", action="store_true",
                   help="exit 1 when a directory is damaged (unreadable lines, trials without "
                        "results, missing experiment files)")
    args = p.parse_args(argv)

    from models.errors import InputError
    from results.experiment import group_members, is_experiment
    from results.storage import default_mirror, is_checkpoint, is_uri, open_remote

    local_dirs, remotes = [], []
    for d in args.experiments:
        path = Path(d)
        if is_uri(d):
            try:
                remote = open_remote(d, flag="EXPERIMENT_DIR", probe=False)
                if not remote.exists():
                    raise InputError(f"EXPERIMENT_DIR {d!r}: nothing stored there")
            except InputError as e:
                p.error(str(e))
            path = default_mirror(d)
            print(f"fetching {d} (without checkpoints) into {path} ...", flush=True)
            remote.pull(path, skip=is_checkpoint)
            remotes.append(remote)
        if not path.is_dir():
            p.error(f"EXPERIMENT_DIR {d!r}: no such directory")
        if not is_experiment(path):
            members = group_members(path)
            if not members:
                p.error(f"EXPERIMENT_DIR {d!r}: not an experiment directory (no experiment.json "
                        "and no trial folders) nor the group folder of a command's experiments")
            print(f"{d}: the group of {len(members)} experiments "
                  f"({', '.join(m.name for m in members)})", flush=True)
            local_dirs.extend(members)
            continue
        local_dirs.append(path)
    first = Path(args.experiments[0]) if not is_uri(args.experiments[0]) else local_dirs[0]
    out = Path(args.out) if args.out else (first if first.is_dir() else local_dirs[0]) / "report"

    from results.report import build_report

    print(f"reading {len(local_dirs)} experiment(s) ...", flush=True)
    path, problems = build_report([str(d) for d in local_dirs], out)
    print(f"report: {path}", flush=True)
    if is_uri(args.experiments[0]) and not args.out:
        remotes[0].push(out, "report")
        print(f"report: {args.experiments[0].split('?', 1)[0].rstrip('/')}/report/report.md",
              flush=True)
    if problems:
        print(f"{len(problems)} problem(s) found (listed in the report):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        if args.strict:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
