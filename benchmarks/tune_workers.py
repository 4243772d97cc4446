"""Two one-thread workers against one two-thread worker: trials finished per hour.

Runs `convzoo tune MODEL --trial-budget T --budget B --pruner none` twice on a fresh
study each time, once with `--workers 2` (one thread each) and once with `--workers 1
--threads 2`, and prints the trials each finished and their best validation
accuracy. Every trial has the same budget, so two workers finish about twice the trials;
what decides is how much training each trial gets in its budget: the mean training
steps per finished trial is printed beside the count. Run it on an otherwise idle
machine:

    python benchmarks/tune_workers.py resnet18 --trial-budget 2m --budget 30m
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import append_section, machine  # noqa: E402


def run(model: str, trial_budget: str, budget: str, workers: int, threads: int, out: Path,
        extra: list[str]) -> dict:  # fmt: skip
    argv = [sys.executable, "-m", "convzoo", "tune", model, "--trial-budget", trial_budget,
            "--budget", budget, "--pruner", "none", "--workers", str(workers),
            "--threads", str(threads), "--out", str(out), *extra]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    wall = time.perf_counter() - start
    rows = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = max((r["value"] for r in done), default=float("nan"))
    steps = [r["user_attrs"]["steps"] for r in done if r["user_attrs"].get("steps")]
    return {"trials": len(done), "wall_s": wall, "per_hour": len(done) / wall * 3600,
            "best": best, "steps": sum(steps) / len(steps) if steps else float("nan")}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="resnet18")
    p.add_argument("--trial-budget", default="2m")
    p.add_argument("--budget", default="30m")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--vary", action="store_true",
                   help="search the family's space (default: every trial is the shipped "
                   "recipe, so the steps per trial compare like with like)")  # fmt: skip
    args, extra = p.parse_known_args()  # the rest goes to convzoo tune
    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.vary:
            space = Path(tmp) / "recipe-only.toml"
            space.write_text(
                'description = "the shipped recipe only"\nwidth = { choices = [0.5] }\n'
            )
            extra = ["--space", str(space), *extra]
        for label, workers, threads in (("2 workers x 1 thread", 2, 1),
                                        ("1 worker x 2 threads", 1, 2)):  # fmt: skip
            r = run(args.model, args.trial_budget, args.budget, workers, threads,
                    Path(tmp) / f"w{workers}", extra)  # fmt: skip
            print(f"{label}: {r['trials']} trials in {r['wall_s']:.0f} s = "
                  f"{r['per_hour']:.1f} trials/hour, {r['steps']:.0f} steps per trial, "
                  f"best validation accuracy {r['best']:.4f}")  # fmt: skip
            rows.append([label, r["trials"], f"{r['wall_s']:.0f}", f"{r['per_hour']:.1f}",
                         f"{r['steps']:.0f}", f"{r['best']:.4f}"])  # fmt: skip
    if not args.no_record:
        append_section(
            f"convzoo tune: two one-thread workers against one two-thread worker ({args.model})",
            [
                "workers",
                "finished trials",
                "wall s",
                "trials/hour",
                "steps per trial",
                "best val acc",
            ],  # fmt: skip
            rows,
            note=f"Trial budget {args.trial_budget}, study budget {args.budget}, no pruning, "
            "a fresh study each, starting with the shipped recipe; the steps per trial are what "
            "each layout gives a trial in its budget.",
        )


if __name__ == "__main__":
    main()
