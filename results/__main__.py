"""Command line of ``results``:

    python -m results report EXPERIMENT_DIR [EXPERIMENT_DIR ...] [--out DIR] [--strict]

Writes ``report.md`` and its PNG figures. A damaged directory is described in the report;
``--strict`` makes any such problem exit 1. A path that is not an experiment exits 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m results", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="Markdown + PNG report of one or more experiment dirs",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("experiments", nargs="+", metavar="EXPERIMENT_DIR",
                   help="experiment directories (<storage-path>/<name>) of any study")
    r.add_argument("--out", default=None,
                   help="where report.md and the PNGs go (default: <first experiment>/report)")
    r.add_argument("--strict", action="store_true",
                   help="exit 1 when a directory is damaged (unreadable lines, trials without "
                        "results, missing experiment files)")
    args = p.parse_args(argv)

    from results.experiment import is_experiment

    for d in args.experiments:
        path = Path(d)
        if not path.is_dir():
            p.error(f"EXPERIMENT_DIR {d!r}: no such directory")
        if not is_experiment(path):
            p.error(f"EXPERIMENT_DIR {d!r}: not an experiment directory (no experiment.json "
                    "and no trial folders)")
    out = Path(args.out) if args.out else Path(args.experiments[0]) / "report"

    from results.report import build_report

    print(f"reading {len(args.experiments)} experiment(s) ...", flush=True)
    path, problems = build_report(args.experiments, out)
    print(f"report: {path}", flush=True)
    if problems:
        print(f"{len(problems)} problem(s) found (listed in the report):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        if args.strict:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
