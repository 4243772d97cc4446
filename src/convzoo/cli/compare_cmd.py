"""convzoo compare: train several models the same way, then rank them (see
:mod:`convzoo.compare`). Run again with the same options and ``--out``, a comparison
skips the models already trained and resumes one that was interrupted."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from ..compare import ALL_MODELS, TRAIN_FIELDS
from .common import stderr_writers
from .options import add_config_arguments, config_overrides

__all__ = ["ALL_MODELS", "models_to_train", "register", "run"]

# How the training options read here, where each model is trained alike.
HELPS = {
    "epochs": "epochs for each model",
    "time_budget": "wall-clock budget for each model's run: 90s, 10m, 1h",
    "device": "where to train; the report runs the models on the same device",
    "recipe": "'none' to train without the families' recipes",
    "threads": "CPU threads for each model's training",
}


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="train several models (or take finished runs) and rank them",
        description=(
            "Train each MODEL with its recipe into OUT/runs/MODEL, as `convzoo train` "
            "would, or take finished runs with --runs; then write OUT/leaderboard.md, "
            "OUT/report.html and its charts as PNG files."
        ),
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="model names (`convzoo list`)")
    p.add_argument(
        "--all",
        action="store_true",
        help="the default model of each family: " + ", ".join(ALL_MODELS),
    )
    p.add_argument(
        "--runs",
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="compare these finished runs instead of training (no MODEL arguments then; "
        "default: train the MODELs)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where runs, leaderboard.md and report.html go (default: runs/compare-<time>)",
    )
    add_config_arguments(
        p, (*TRAIN_FIELDS, "recipe"), title="training (each model alike)", helps=HELPS
    )
    g = p.add_argument_group("report")
    g.add_argument(
        "--no-speed", action="store_true", help="do not measure inference speed (default: measure)"
    )
    g.add_argument(
        "--no-explain",
        action="store_true",
        help="leave out the same test images explained by each model (default: show them; "
        "pages in OUT/explain)",
    )
    p.set_defaults(run=run)


def _given(args) -> dict:
    given = config_overrides(args, TRAIN_FIELDS)
    return given


def models_to_train(args) -> list[str]:
    """The model names asked for, checked, in order, without repeats."""
    from ..compare import check_models

    names = list(args.models) + (list(ALL_MODELS) if args.all else [])
    return check_models(
        names, runs=args.runs, overrides=_given(args), recipe=getattr(args, "recipe", None)
    )


def run(args) -> int:
    from ..compare import check_output, check_runs, plan_runs, train_all, write_comparison
    from ..train import TrainingInterrupted
    from ..training import train_run

    quiet = getattr(args, "quiet", False)
    recipe = getattr(args, "recipe", None)

    log, warn = stderr_writers("compare", quiet)

    models = models_to_train(args)
    given = _given(args)
    out = Path(args.out) if args.out else _default_out()
    command = _command_line(args, models, given, recipe, out)
    if args.runs is not None:
        run_dirs = check_runs(args.runs)
        check_output(out, run_dirs)
        failed: list[str] = []
    else:
        check_output(out, [])
        plans = plan_runs(models, given, out, recipe=recipe, note=warn)
        try:
            run_dirs, failed = train_all(plans, train=train_run, log=log, warn=warn)
        except TrainingInterrupted as exc:
            sys.stderr.write(
                f"\nconvzoo compare: {exc}\nRun the same `convzoo compare` command again "
                f"(with --out {out}) to resume and finish the comparison.\n"
            )
            return exc.exit_code
        if not run_dirs:
            sys.stderr.write("convzoo compare: error: no model finished training\n")
            return 1
    report = write_comparison(
        run_dirs,
        out,
        command=command,
        device=given.get("device", "cpu"),
        speed=not args.no_speed,
        data_dir=given.get("data_dir"),
        explain=not args.no_explain,
        log=log,
    )
    print(report.markdown().rstrip().split("\n\n")[-1])  # the table
    print(f"\nleaderboard: {out / 'leaderboard.md'}\nreport: {out / 'report.html'}")
    for label, analysis in report.analyses.items():
        for note in analysis.notes:
            log(f"convzoo compare: warning: {label}: {note}")
    if failed:
        sys.stderr.write(
            f"convzoo compare: error: {', '.join(failed)} did not finish training "
            "(see above); the report has the others\n"
        )
        return 1
    return 0


def _default_out() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"compare-{stamp}"


def _command_line(args, models: list[str], given: dict, recipe: str | None, out: Path) -> str:
    """The command line as typed, or rebuilt from the options when called as a function."""
    from ..train.argv import option_argv
    from .common import command_line

    if sys.argv[1:2] == ["compare"]:
        return command_line(sys.argv[1:])
    argv = ["compare", *models]
    if args.runs is not None:
        argv += ["--runs", *args.runs]
    argv += option_argv(given)
    if recipe is not None:
        argv += ["--recipe", recipe]
    if args.no_speed:
        argv.append("--no-speed")
    if args.no_explain:
        argv.append("--no-explain")
    return command_line([*argv, "--out", str(out)])
