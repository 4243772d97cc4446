"""convzoo ablate: train a family's network with and without each of its design ideas,
alike, and tabulate what each idea buys (see :mod:`convzoo.ablate`). Run again with the
same options and ``--out``, an ablation reuses the runs already finished."""

from __future__ import annotations

import sys
from pathlib import Path

from ..ablate import ABLATIONS, TRAIN_FIELDS
from .common import positive_int, stderr_writers
from .options import add_config_arguments, config_overrides

HELPS = {
    "epochs": "epochs for each run",
    "time_budget": "wall-clock budget for each run: 90s, 5m, 10m",
    "seed": "the first seed; --seeds K runs seeds SEED .. SEED+K-1",
    "threads": "CPU threads for each run's training",
    "lr": "peak learning rate for every variant alike (default: the recipe's); e.g. for a "
    "variant that diverges at the recipe's",
}


def _variants_help() -> str:
    return "; ".join(
        f"{family} ({a.model}): {', '.join(v.name for v in a.variants)}"
        for family, a in ABLATIONS.items()
    )


def register(sub) -> None:
    p = sub.add_parser(
        "ablate",
        help="train a family's network with and without each design idea, alike",
        description=(
            "Train FAMILY's baseline and each of its ablations with the family's recipe, "
            "the same budget and the same seeds into OUT/runs/VARIANT/seedS, then write "
            "OUT/ablation.md, ablation.json, loss-curves.png and ablation.html. Variants: "
            + _variants_help()
        ),
    )
    p.add_argument("family", metavar="FAMILY", help=", ".join(ABLATIONS))
    p.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="the family's model to ablate, e.g. resnet18 (default: the family's, above; "
        "for resnet, resnet34, where the paper shows the plain network falling behind)",
    )
    p.add_argument(
        "--seeds", type=positive_int, default=1, metavar="K", help="seeds per variant (default: 1)"
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these variants (names, or one comma-separated list; default: all)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where runs and the table go (default: runs/ablate-MODEL)",
    )
    add_config_arguments(p, TRAIN_FIELDS, title="training (each run alike)", helps=HELPS)
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import ablate
    from ..errors import ConfigError
    from ..train import TrainingInterrupted
    from ..train.argv import option_argv
    from ..training import train_run
    from ..units import format_duration
    from .common import command_line

    quiet = getattr(args, "quiet", False)

    log, warn = stderr_writers("ablate", quiet)

    family = args.family
    ablate.check_family(family)
    model = ablate.check_model(family, args.model)
    only = [n for item in args.only for n in item.split(",") if n] if args.only else None
    given = config_overrides(args, TRAIN_FIELDS)
    out = Path(args.out) if args.out else Path("runs") / f"ablate-{model}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose a folder")
    plans = ablate.plan_ablation(
        family, given, out, model=model, seeds=args.seeds, only=only, note=warn
    )
    try:
        _, failed = ablate.train_all(plans, train=train_run, log=log, warn=warn)
    except TrainingInterrupted as exc:
        sys.stderr.write(
            f"\nconvzoo ablate: {exc}\nRun the same `convzoo ablate` command again "
            f"(with --out {out}) to resume and finish the ablation.\n"
        )
        return exc.exit_code
    rows = ablate.ablation_table(plans, family)
    budget = format_duration(given["time_budget"]) if given.get("time_budget") else ""
    if sys.argv[1:2] == ["ablate"]:
        argv = sys.argv[1:]
    else:  # called as a function: the command rebuilt from the options
        argv = ["ablate", family, "--model", model, "--seeds", str(args.seeds)]
        argv += [*option_argv(given), *(["--only", *only] if only else []), "--out", str(out)]
    paths = ablate.write_ablation(
        rows, out, family=family, command=command_line(argv), budget=budget
    )
    print(ablate.format_table(rows), end="")
    print(f"\ntable: {paths['table']}\nchart: {paths['chart']}\npage: {paths['page']}")
    if failed:
        sys.stderr.write(
            f"convzoo ablate: error: {', '.join(failed)} did not finish training (see above); "
            "the table has the others\n"
        )
        return 1
    return 0
