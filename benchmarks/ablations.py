"""Design-idea ablations: `convzoo ablate FAMILY` for each family, on Fashion-MNIST.

The residual ablation (ResNet-34 with and without its shortcuts, the paper's Fig. 4 at
small scale) runs at 10 minutes per run with 2 seeds; every other family at 5 minutes
per run with 1 seed. Each family runs the real command in a subprocess; its table
(ablation.md) is printed and appended to RESULTS.md with the command, and the runs,
charts and pages stay under --out.

    python benchmarks/ablations.py                       # all six: about 2 hours
    python benchmarks/ablations.py --families resnet     # the headline: about 40 minutes
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import append_section  # noqa: E402

from convzoo.ablate import ABLATIONS  # noqa: E402

HEADER = ["family", "model", "variant", "takes away", "budget", "seeds", "test acc (mean)",
          "std", "final train loss", "epochs", "params", "mult-adds", "command"]  # fmt: skip


def run_family(family: str, budget: str, seeds: int, out: Path, threads: int | None) -> list:
    folder = out / family
    cmd = ["convzoo", "ablate", family, "--time-budget", budget, "--seeds", str(seeds)]
    cmd += ["--out", str(folder), "--quiet"]
    if threads:
        cmd += ["--threads", str(threads)]
    shown = shlex.join(cmd)
    print(f"$ {shown}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "convzoo", *cmd[1:]], capture_output=True, text=True
    )
    print(done.stdout, end="")
    if done.returncode != 0:
        print(done.stderr, end="", file=sys.stderr)
    print(f"({family}: {time.perf_counter() - started:.0f} s)\n", flush=True)
    try:
        table = json.loads((folder / "ablation.json").read_text())
    except (OSError, ValueError):
        return []
    rows = []
    for v in table["variants"]:
        mean, std, loss = (
            v["test_accuracy_mean"],
            v["test_accuracy_std"],
            v["final_train_loss_mean"],
        )
        epochs = v["epochs"]
        rows.append([
            family, v["model"], v["variant"], v["removes"] or "(baseline)", budget,
            "; ".join([", ".join(map(str, v["seeds"]))] * bool(v["seeds"])
                      + v.get("diverged", [])) or "none finished",
            "-" if mean is None else f"{mean:.4f}",
            "-" if std is None else f"{std:.4f}",
            "-" if loss is None else f"{loss:.4f}",
            "-" if not epochs else f"{sum(epochs) / len(epochs):.2f}",
            f"{v['params']:,}" if v["params"] else "-",
            f"{v['macs']:,}" if v["macs"] else "-",
            f"`{shown}`",
        ])  # fmt: skip
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    p.add_argument("--budget", default="5m", help="per run, every family but resnet")
    p.add_argument("--seeds", type=int, default=1, help="seeds, every family but resnet")
    p.add_argument("--resnet-budget", default="10m", help="per run, the residual ablation")
    p.add_argument("--resnet-seeds", type=int, default=2, help="seeds, the residual ablation")
    p.add_argument("--out", default="runs/ablations", help="where the runs and tables stay")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()
    rows = []
    for family in args.families:
        resnet = family == "resnet"
        budget = args.resnet_budget if resnet else args.budget
        seeds = args.resnet_seeds if resnet else args.seeds
        rows += run_family(family, budget, seeds, Path(args.out), args.threads)
    if rows and not args.no_record:
        append_section(
            "Design-idea ablations (convzoo ablate, Fashion-MNIST)",
            HEADER,
            rows,
            note="Each family's variants trained with its recipe, the same budget per run and "
            "the same seeds; test accuracy is the mean over the seeds (std: sample standard "
            "deviation, 2 seeds or more). The loss curves are OUT/FAMILY/loss-curves.png.",
        )
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
