"""Time to accuracy: train a model with its recipe under a wall-clock budget.

Runs the real command, `convzoo train MODEL --dataset fashion-mnist --time-budget B`, in a
subprocess and times the whole of it (start-up, data loading, training, evaluation and
saving). Prints one row per run and appends the rows to RESULTS.md.

    python benchmarks/time_to_accuracy.py resnet18 --budget 5m --seed 0 --seed 1
    python benchmarks/time_to_accuracy.py --all --budget 10m
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import append_section  # noqa: E402

from convzoo.compare import ALL_MODELS  # noqa: E402

# The default model of each family, as trained by `convzoo compare --all`.
FAMILY_MODELS = list(ALL_MODELS)
HEADER = [
    "model",
    "recipe",
    "budget",
    "seed",
    "wall s",
    "epochs",
    "test acc",
    "test acc (TTA)",
    "best val acc",
    "params",
    "mult-adds",
    "command",
]


def run_one(
    model: str,
    budget: str,
    seed: int,
    recipe: str | None,
    dataset: str,
    extra: list[str],
    keep: Path | None,
) -> list[str]:
    out = (
        Path(tempfile.mkdtemp(prefix=f"tta-{model}-"))
        if keep is None
        else keep / f"{model}-s{seed}"
    )
    cmd = [
        sys.executable,
        "-m",
        "convzoo",
        "train",
        model,
        "--dataset",
        dataset,
        "--time-budget",
        budget,
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    if recipe:
        cmd += ["--recipe", recipe]
    cmd += extra
    shown = " ".join(["convzoo", *cmd[3:]])
    shown = shown.replace(f" --out {out}", "")
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], file=sys.stderr)
        raise SystemExit(f"{model}: training failed with exit code {proc.returncode}")
    r = json.loads((out / "result.json").read_text())
    if keep is None:
        shutil.rmtree(out, ignore_errors=True)
    tta = r.get("test_accuracy_tta")
    return [
        model,
        r.get("recipe") or "-",
        budget,
        str(seed),
        f"{wall:.0f}",
        f"{r['epochs']:.2f}".rstrip("0").rstrip("."),
        f"{r['test_accuracy']:.4f}",
        f"{tta:.4f}" if tta is not None else "-",
        f"{r['best_val_accuracy']:.4f}" if r.get("best_val_accuracy") is not None else "-",
        f"{r['params']:,}",
        f"{r['macs'] / 1e6:.1f}M",
        f"`{shown}`",
    ]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("models", nargs="*", help="models to train (default with --all: one per family)")
    p.add_argument("--all", action="store_true", help="the six families' default models")
    p.add_argument("--budget", default="10m", help="wall-clock budget per run (default 10m)")
    p.add_argument("--seed", type=int, action="append", help="seed (repeat for several); default 0")
    p.add_argument("--recipe", help="recipe name or path (default: the family's recipe)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--keep", type=Path, help="keep the run directories under this folder")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    extra = argv[cut + 1 :]  # after --: more `convzoo train` flags
    models = args.models or (FAMILY_MODELS if args.all else [])
    if not models:
        p.error("name models or use --all")
    rows = []
    print(" | ".join(HEADER))
    for model in models:
        for seed in args.seed or [0]:
            row = run_one(model, args.budget, seed, args.recipe, args.dataset, extra, args.keep)
            print(" | ".join(row), flush=True)
            rows.append(row)
    if not args.no_record:
        append_section(
            f"Time to accuracy on {args.dataset}, budget {args.budget}",
            HEADER,
            rows,
            note="Wall seconds are those of the whole `convzoo train` command.",
        )


if __name__ == "__main__":
    main()
