"""convzoo report: the self-contained HTML report of one or more finished runs."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write the HTML report of finished runs",
        description=(
            "Write one self-contained HTML file about finished runs: the leaderboard, "
            "accuracy against multiply-adds and training time, validation curves, each "
            "model's confusion matrix, per-class accuracy, most confident mistakes and "
            "anatomy, and the machine, versions and commands. The models are run again "
            "on their test sets and timed on this machine."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of `convzoo train`")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="where to write the report (default: RUN_DIR/report.html for one run, "
        "./report.html for several); never one of the runs' own files",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="cpu",
        help="where to run the models and time them (default: cpu)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the datasets are (default: where training found them)",
    )
    p.add_argument(
        "--no-speed",
        action="store_true",
        help="do not measure the inference speed (default: measured, about a second a model)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="print only the report's path (default: progress and the leaderboard too)",
    )
    p.set_defaults(run=run)


def default_out(runs: list[str]) -> Path:
    return Path(runs[0]) / "report.html" if len(runs) == 1 else Path("report.html")


def run(args) -> int:
    from ..infer import optimize
    from ..report.html import build_report

    out = Path(args.out) if args.out else default_out(args.runs)

    def log(line: str) -> None:
        if not args.quiet:
            sys.stderr.write(line + "\n")

    report = build_report(
        args.runs,
        out,
        device=args.device,
        speed=not args.no_speed,
        data_dir=args.data_dir,
        log=log,
        optimize=optimize,
    )
    for label, analysis in report.analyses.items():
        for note in analysis.notes:
            sys.stderr.write(f"convzoo report: warning: {label}: {note}\n")
    print(report.path)
    return 0
