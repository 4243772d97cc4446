"""convzoo tune: search a family's recipe with Optuna (see :mod:`convzoo.tune`)."""

from __future__ import annotations

import argparse
import signal
import sys

from ..train.config import parse_value
from .options import add_config_arguments, argument_type, config_overrides

# The training options every trial takes alike.
TRIAL_FIELDS = ("dataset", "data_dir", "limit_train", "val_size", "image_size", "device",
                "threads", "amp", "channels_last")  # fmt: skip


def _duration(text: str) -> float:
    try:
        return parse_value("time_budget", text)
    except Exception as exc:  # noqa: BLE001 - argparse reports it as one line
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    return parse


def register(sub) -> None:
    from ..tune.study import PRUNERS, SAMPLERS

    p = sub.add_parser(
        "tune",
        help="search a model's recipe with Optuna, on one machine or many",
        description=(
            "Each trial trains MODEL for --trial-budget on the training split and is "
            "judged by its validation accuracy (the test split is never read). The study "
            "lives in OUT/study.db, or in --storage shared by workers on many machines. "
            "OUT gets best.toml, trials.jsonl and report.html. See docs/tune.md."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a model name (`convzoo list`)")
    p.add_argument("--trial-budget", type=_duration, required=True, metavar="T",
                   help="wall-clock budget of each trial: 90s, 2m")  # fmt: skip
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--budget", type=_duration, metavar="T",
                        help="stop starting trials when one would not finish within T (1h)")  # fmt: skip
    length.add_argument("--trials", type=_count(1), metavar="N",
                        help="trials in the study, finished or running, to stop at")  # fmt: skip
    p.add_argument("--space", metavar="FILE",
                   help="a search-space TOML file (default: recipes/<dataset>/spaces/<family>.toml)")  # fmt: skip
    p.add_argument("--recipe", metavar="NAME",
                   help="the recipe trials start from and the first trial trains; "
                   "'none' for the defaults (default: the family's)")  # fmt: skip
    p.add_argument("--study", metavar="NAME", help="the study name (default: MODEL-DATASET)")
    p.add_argument("--storage", metavar="URL",
                   help="an SQLAlchemy URL, e.g. postgresql://user:pw@host/db, shared by "
                   "workers on many machines (default: sqlite in OUT)")  # fmt: skip
    p.add_argument("--workers", type=_count(1), default=1, metavar="N",
                   help="worker processes on this machine, cores/N threads each (default: 1)")  # fmt: skip
    p.add_argument("--pruner", choices=PRUNERS, default="hyperband", help="(default: hyperband)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="(default: tpe)")
    p.add_argument("--seed", type=argument_type("seed"), default=0, metavar="S",
                   help="the sampler's seed (worker k: S+k) and every trial's training "
                   "seed (default: 0)")  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="the study directory (default: runs/tune-STUDY)")
    p.add_argument("--confirm", type=_count(0), default=0, metavar="K",
                   help="then train best.toml with K fresh seeds and report test accuracy")  # fmt: skip
    p.add_argument("--heartbeat", type=_count(1), default=20, metavar="S",
                   help="seconds between a running trial's heartbeats (default: 20)")  # fmt: skip
    p.add_argument("--grace", type=_count(2), default=60, metavar="S",
                   help="a trial with no heartbeat for S seconds is failed and retried "
                   "(default: 60)")  # fmt: skip
    add_config_arguments(p, TRIAL_FIELDS, title="every trial")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..tune import TuneSpec, tune
    from .common import command_line

    spec = TuneSpec(
        model=args.model,
        trial_budget=args.trial_budget,
        budget=args.budget,
        trials=args.trials,
        space=args.space,
        recipe=args.recipe,
        study=args.study,
        storage=args.storage,
        workers=args.workers,
        pruner=args.pruner,
        sampler=args.sampler,
        seed=args.seed,
        out=args.out,
        confirm=args.confirm,
        heartbeat=args.heartbeat,
        grace=args.grace,
        options=config_overrides(args, TRIAL_FIELDS),
    )
    command = command_line(sys.argv[1:]) if sys.argv[1:2] == ["tune"] else "convzoo.tune"
    result = tune(spec, command=command, say=lambda line: print(line, flush=True))
    if result.best_number is not None:
        print(f"best: trial {result.best_number}, validation accuracy {result.best_value:.4f}")
    print(f"study {result.study_name} in {result.storage}")
    for label, path in (("recipe", result.best_recipe), ("trials", result.trials_file),
                        ("report", result.report)):  # fmt: skip
        if path is not None:
            print(f"{label}: {path}")
    if result.confirmation is not None:
        c = result.confirmation
        each = ", ".join(f"{a:.4f}" for a in c.test_accuracies)
        print(f"test accuracy of best.toml over seeds {c.seeds}: mean {c.mean:.4f} ({each})")
    if result.stopped_by is not None:
        name = signal.Signals(result.stopped_by).name
        sys.stderr.write(
            f"convzoo tune: {name} received: the running trial is recorded as failed and "
            "queued again; run the same command to continue the study\n"
        )
        return 128 + int(result.stopped_by)
    return 0
