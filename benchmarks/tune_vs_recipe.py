"""Does `convzoo tune` beat the shipped recipe? The tune benchmarks (a) and (b) of docs/tune.md.

Runs `convzoo tune MODEL --trial-budget T --budget B [--recipe none]`, then trains
the shipped recipe and tune's best.toml with the same fresh seeds (not the search's)
at the same budget, and prints each run's test accuracy (TTA where the recipe uses it)
and the means. (a): the shipped recipe as the start; (b): `--from-defaults`.

    python benchmarks/tune_vs_recipe.py nin --trial-budget 5m --budget 2h
    python benchmarks/tune_vs_recipe.py nin --trial-budget 5m --budget 2h --from-defaults
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import append_section, machine  # noqa: E402

from convzoo.train.recipes import family_of  # noqa: E402


def train(model: str, recipe: str, budget: str, seed: int, out: Path, extra: list) -> float:
    argv = [sys.executable, "-m", "convzoo", "train", model, "--recipe", recipe,
            "--time-budget", budget, "--seed", str(seed), "--out", str(out), "--quiet", *extra]  # fmt: skip
    subprocess.run(argv, check=True)
    result = json.loads((out / "result.json").read_text())
    return result.get("test_accuracy_tta") or result["test_accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--trial-budget", default="5m")
    p.add_argument("--budget", default="2h")
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 102])
    p.add_argument("--from-defaults", action="store_true", help="tune from --recipe none (b)")
    p.add_argument("--out", default=None, help="keep the study and runs here")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of every trial and run (default: all cores); with taskset, "
        "two benchmarks can share a 2-core machine a core each",
    )
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="tune-vs-recipe-"))
    study = out / "study"
    tune = [sys.executable, "-m", "convzoo", "tune", args.model, "--trial-budget",
            args.trial_budget, "--budget", args.budget, "--out", str(study)]  # fmt: skip
    extra = ["--threads", str(args.threads)] if args.threads else []
    tune += extra
    if args.from_defaults:
        tune += ["--recipe", "none"]
    print(f"machine: {machine()}\ncommand: {' '.join(tune[1:])}", flush=True)
    subprocess.run(tune, check=True)
    family = family_of(args.model)
    rows = {}
    for label, recipe in (("shipped", family), ("tuned", str(study / "best.toml"))):
        rows[label] = [train(args.model, recipe, args.trial_budget, s, out / f"{label}-{s}", extra)
                       for s in args.seeds]  # fmt: skip
    for label, accs in rows.items():
        each = ", ".join(f"{a:.4f}" for a in accs)
        print(f"{label}: mean test accuracy {sum(accs) / len(accs):.4f} over seeds "
              f"{args.seeds} ({each})")  # fmt: skip
    gain = (sum(rows["tuned"]) - sum(rows["shipped"])) / len(args.seeds) * 100
    print(f"tuned - shipped: {gain:+.2f} points (the target of (a) is at least +0.30)")
    if not args.no_record:
        start = "plain defaults (--recipe none)" if args.from_defaults else "the shipped recipe"
        table = [[label, ", ".join(map(str, args.seeds)), args.trial_budget,
                  ", ".join(f"{a:.4f}" for a in accs), f"{sum(accs) / len(accs):.4f}"]
                 for label, accs in rows.items()]  # fmt: skip
        append_section(
            f"convzoo tune against the shipped recipe: {args.model}, search from {start}",
            ["recipe", "fresh seeds", "budget per run", "test accuracy (TTA)", "mean"],
            table,
            note=f"Search: `{' '.join(tune[1:])}` (the test split is never read during it); "
            f"then both recipes trained with seeds the search did not use. Tuned minus "
            f"shipped: {gain:+.2f} points. best.toml: {study / 'best.toml'}.",
        )


if __name__ == "__main__":
    main()
