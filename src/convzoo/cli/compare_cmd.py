"""convzoo compare: train several models the same way, then rank them.

Each model is trained as ``convzoo train`` would train it (its family's recipe for
Fashion-MNIST, then the options given here) into ``OUT/runs/<model>``; or finished runs
are taken as they are with ``--runs``. Then ``OUT/leaderboard.md``,
``OUT/report.html`` and the report's comparison charts as PNG files
(``accuracy-vs-macs.png``, ``accuracy-vs-time.png``, ``val-accuracy.png``) are written. Run again with the same options and ``--out``, a
comparison skips the models already trained and resumes one that was interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from .common import positive_float, positive_int

# The default model of each of the six families.
ALL_MODELS = ("alexnet", "vgg11_bn", "nin", "googlenet", "resnet18", "densenet121")

# Options passed to every model's training (TrainConfig fields of the same name).
TRAIN_FIELDS = (
    "dataset", "data_dir", "epochs", "time_budget", "seed", "width", "limit_train",
    "val_size", "batch_size", "device", "threads", "quiet",
)  # fmt: skip
# Options that may differ when a run is reused or resumed.
FREE_FIELDS = ("data_dir", "device", "threads", "quiet")


def register(sub) -> None:
    from .train_cmd import _duration, _val_size

    p = sub.add_parser(
        "compare",
        help="train several models (or take finished runs) and rank them",
        description=(
            "Train each MODEL with its recipe into OUT/runs/MODEL, as `convzoo train` "
            "would, or take finished runs with --runs; then write OUT/leaderboard.md, "
            "OUT/report.html and its charts as PNG files."
        ),
    )
    S = argparse.SUPPRESS
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
        help="compare these finished runs instead of training (no MODEL arguments then)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where runs, leaderboard.md and report.html go (default runs/compare-<time>)",
    )
    g = p.add_argument_group("training (each model alike)")
    g.add_argument(
        "--dataset", default=S, help="fashion-mnist (default), mnist, cifar10 or a folder"
    )
    g.add_argument(
        "--data-dir", default=S, metavar="DIR", help="where to look for the dataset first"
    )
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_int, default=S, help="epochs for each model")
    length.add_argument(
        "--time-budget",
        type=_duration,
        default=S,
        metavar="T",
        help="wall-clock budget for each model's run: 90s, 10m, 1h",
    )
    g.add_argument("--seed", type=int, default=S, help="default 0")
    g.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="'none' to train without the families' recipes (default: each family's own)",
    )
    g.add_argument("--width", type=positive_float, default=S, help="channel multiplier")
    g.add_argument("--limit-train", type=positive_int, default=S, metavar="N")
    g.add_argument("--val-size", type=_val_size, default=S, metavar="N")
    g.add_argument("--batch-size", type=positive_int, default=S)
    g.add_argument("--threads", type=positive_int, default=S, help="CPU threads")
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=S,
        help="where to train; the report runs the models on the same device",
    )
    g = p.add_argument_group("report")
    g.add_argument("--no-speed", action="store_true", help="do not measure inference speed")
    p.add_argument("--quiet", action="store_true", default=S, help="no progress output")
    p.set_defaults(run=run)


def _given(args) -> dict:
    return {k: getattr(args, k) for k in TRAIN_FIELDS if hasattr(args, k)}


def models_to_train(args) -> list[str]:
    """The model names asked for, checked, in order, without repeats."""
    from ..errors import ConfigError
    from ..registry import check_model_name

    names = list(args.models) + (list(ALL_MODELS) if args.all else [])
    if args.runs is not None:
        if names:
            raise ConfigError(
                "give either models to train or --runs RUN_DIR... to compare finished runs, "
                "not both"
            )
        training = sorted(set(_given(args)) - {"quiet", "device", "data_dir"})
        if training or args.recipe:
            flag = "--" + (training[0] if training else "recipe").replace("_", "-")
            raise ConfigError(f"{flag} has no effect with --runs (nothing is trained)")
        return []
    if not names:
        raise ConfigError("no models to compare: give model names, --all, or --runs RUN_DIR...")
    out: list[str] = []
    for name in names:
        check_model_name(name)
        if name not in out:
            out.append(name)
    return out


def run(args) -> int:
    from ..errors import ConfigError
    from ..report.html import build_report
    from ..report.runs import load_run

    quiet = getattr(args, "quiet", False)

    def log(line: str) -> None:
        if not quiet:
            sys.stderr.write(line + "\n")

    models = models_to_train(args)
    out = Path(args.out) if args.out else _default_out()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    command = _command_line(args, models, out)
    if args.runs is not None:
        for path in args.runs:
            load_run(path)  # every one checked before any work
        run_dirs = [Path(p) for p in args.runs]
        failed: list[str] = []
    else:
        run_dirs, failed, code = _train_all(models, args, out, log)
        if code is not None:
            return code
        if not run_dirs:
            sys.stderr.write("convzoo compare: error: no model finished training\n")
            return 1
    out.mkdir(parents=True, exist_ok=True)
    device = getattr(args, "device", "cpu")
    report = build_report(
        run_dirs,
        out / "report.html",
        markdown=out / "leaderboard.md",
        command=command,
        device="cpu" if device == "auto" else device,
        speed=not args.no_speed,
        data_dir=getattr(args, "data_dir", None),
        log=log,
        charts=out,
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


def _command_line(args, models: list[str], out: Path) -> str:
    """The command line as typed, or rebuilt from the options when called as a function."""
    from .common import command_line

    if sys.argv[1:2] == ["compare"]:
        return command_line(sys.argv[1:])
    argv = ["compare", *models]
    if args.runs is not None:
        argv += ["--runs", *args.runs]
    for key, value in _given(args).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        else:
            argv += [flag, str(value)]
    if args.recipe:
        argv += ["--recipe", args.recipe]
    if args.no_speed:
        argv.append("--no-speed")
    return command_line([*argv, "--out", str(out)])


def _train_command(model: str, overrides: dict, recipe: str | None) -> str:
    """The `convzoo train` line that trains ``model`` as this comparison does."""
    from .common import command_line

    argv = ["train", model]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        else:
            argv += [flag, str(value)]
    if recipe:
        argv += ["--recipe", recipe]
    return command_line(argv)


def _train_all(models: list[str], args, out: Path, log):
    """Train (or reuse, or resume) each model; (finished run dirs, failed models, exit code).

    Every model's configuration is built and checked before the first one trains.
    """
    from ..errors import ConfigError
    from ..train.config import TrainConfig, build_config
    from ..train.loop import TrainingDiverged, TrainingInterrupted
    from ..training import train_run as train

    given = _given(args)
    plans = []
    for model in models:
        run_dir = out / "runs" / model
        overrides = {**given, "out": str(run_dir)}
        cfg = build_config(model, overrides, recipe=args.recipe)
        state = _existing(run_dir, cfg, given)
        plans.append((model, run_dir, overrides, cfg, state))
    finished, failed = [], []
    for i, (model, run_dir, overrides, cfg, state) in enumerate(plans, start=1):
        command = _train_command(model, overrides, args.recipe)
        if state == "done":
            log(f"[{i}/{len(plans)}] {model}: already trained in {run_dir}, reused")
            finished.append(run_dir)
            continue
        started = time.perf_counter()
        try:
            if state == "partial":
                log(f"[{i}/{len(plans)}] {model}: resuming the interrupted run in {run_dir}")
                resume_cfg = TrainConfig(model=model)
                for key in FREE_FIELDS:
                    if key in given:
                        setattr(resume_cfg, key, given[key])
                train(resume_cfg, resume=run_dir, command=command, started=started)
            else:
                log(f"[{i}/{len(plans)}] {model}: training into {run_dir}")
                train(cfg, command=command, started=started)
        except TrainingInterrupted as exc:
            sys.stderr.write(
                f"\nconvzoo compare: {exc}\nRun the same `convzoo compare` command again "
                f"(with --out {out}) to resume and finish the comparison.\n"
            )
            return finished, failed, exc.exit_code
        except TrainingDiverged as exc:
            sys.stderr.write(f"convzoo compare: {model}: {exc}\n")
            failed.append(model)
            continue
        except ConfigError as exc:
            # e.g. a time budget too short for this model: the others still run
            sys.stderr.write(f"convzoo compare: {model}: {exc}\n")
            failed.append(model)
            continue
        finished.append(run_dir)
    return finished, failed, None


def _existing(run_dir: Path, cfg, given: dict) -> str | None:
    """'done' (a finished run of the same settings), 'partial' (interrupted) or None."""
    from ..errors import ConfigError

    if not run_dir.exists():
        return None
    config_path = run_dir / "config.json"
    has_run = (run_dir / "result.json").is_file() or (run_dir / "checkpoints").is_dir()
    if not has_run:
        return None
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{run_dir} holds a run without a readable config.json; choose another --out"
        ) from None
    if saved.get("model") != cfg.model:
        raise ConfigError(f"{run_dir} holds a run of {saved.get('model')}, not {cfg.model}")
    wanted = cfg.to_dict()
    for key in [*given, "recipe"]:
        if key in FREE_FIELDS or key == "out":
            continue
        if saved.get(key) != wanted.get(key):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{run_dir} already holds a {cfg.model} run with {flag} "
                f"{saved.get(key)!r}, not {wanted.get(key)!r}; choose another --out"
            )
    return "done" if (run_dir / "result.json").is_file() else "partial"
