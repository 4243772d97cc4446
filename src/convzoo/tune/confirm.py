"""``--confirm K``: train the best recipe again with K fresh seeds (seeds the search
never used), at the trial budget and without pruning, and read the test split once, at
the end of each run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..train import train
from ..train.recipes import build_config
from .spec import TunePlan


@dataclasses.dataclass
class Confirmation:
    seeds: list[int]
    test_accuracies: list[float]
    run_dirs: list[Path]

    @property
    def mean(self) -> float:
        return sum(self.test_accuracies) / len(self.test_accuracies)


def confirm(
    plan: TunePlan, best_toml: Path, k: int, *, say: Callable[[str], None] = print
) -> Confirmation:
    """Train ``best_toml`` with seeds seed+1 ... seed+k; the test accuracy of each run
    (flip TTA when the recipe uses it)."""
    fixed = {key: v for key, v in plan.fixed.items() if key not in ("threads",)}
    seeds = [plan.spec.seed + i for i in range(1, k + 1)]
    accuracies, dirs = [], []
    for seed in seeds:
        run_dir = plan.out / "confirm" / f"seed-{seed}"
        cfg = build_config(
            plan.spec.model, {**fixed, "seed": seed, "out": str(run_dir)}, recipe=str(best_toml)
        )
        say(f"confirming the best recipe with seed {seed} -> {run_dir}")
        result = train(cfg).result
        accuracy = result.get("test_accuracy_tta") if cfg.tta else result["test_accuracy"]
        accuracies.append(float(accuracy))
        dirs.append(run_dir)
    return Confirmation(seeds, accuracies, dirs)
