"""Several runs trained alike, each into its own folder: what each folder already holds
(:func:`existing_state`), and training, reusing or resuming every run (:func:`train_all`).

``convzoo compare`` (one run per model) and ``convzoo ablate`` (one run per variant and
seed) both plan their runs as :class:`Plan` objects and hand them to :func:`train_all`,
so a finished run is reused and an interrupted one resumed, the same way in both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import CHECKPOINT_DIR, CONFIG_FILE, RESULT_FILE
from ..errors import ConfigError
from .argv import to_argv
from .config import RESUME_OPTIONS, TrainConfig, flag_of
from .trainer import TrainingDiverged, TrainResult, train

__all__ = ["Plan", "existing_state", "train_all"]

Log = Callable[[str], None]
Trainer = Callable[..., TrainResult]


def _quiet(line: str) -> None:
    pass


@dataclass
class Plan:
    """How one run of a comparison (or an ablation) is trained."""

    model: str
    run_dir: Path
    overrides: dict[str, Any]  # the TrainConfig fields given, with out = run_dir
    config: TrainConfig
    state: str | None  # "done" (reuse), "partial" (resume) or None (train)
    recipe: str | None = None
    label: str | None = None  # how progress lines and failures name it (default: model)

    @property
    def name(self) -> str:
        return self.label or self.model

    @property
    def command(self) -> str:
        """The `convzoo train` line that trains this run."""
        import shlex

        return shlex.join(["convzoo", *to_argv(self.model, self.overrides, recipe=self.recipe)])


def existing_state(run_dir: Path, cfg: TrainConfig, given: dict[str, Any]) -> str | None:
    """'done' (a finished run of the same settings), 'partial' (interrupted) or None.

    A run of other settings is a :class:`ConfigError` naming the first flag that
    differs: one folder never mixes two comparisons. Options that may change on resume
    (:data:`~convzoo.train.config.RESUME_OPTIONS`) may differ.
    """
    # A run that stopped before its first checkpoint (say, a time budget too short for
    # it) left an empty checkpoints/ folder: nothing to reuse or resume.
    checkpoints = run_dir / CHECKPOINT_DIR
    has_run = (run_dir / RESULT_FILE).is_file() or (
        checkpoints.is_dir() and any(checkpoints.iterdir())
    )
    if not run_dir.exists() or not has_run:
        return None
    try:
        saved = json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{run_dir} holds a run without a readable {CONFIG_FILE}; choose another --out"
        ) from None
    if not isinstance(saved, dict) or saved.get("model") != cfg.model:
        other = saved.get("model") if isinstance(saved, dict) else None
        raise ConfigError(
            f"{run_dir} holds a run of {other}, not {cfg.model}; choose another --out"
        )
    wanted = cfg.to_dict()
    for key in [*given, "recipe"]:
        if key in RESUME_OPTIONS or key == "out":
            continue
        if saved.get(key) != wanted.get(key):
            raise ConfigError(
                f"{run_dir} already holds a {cfg.model} run with {flag_of(key)} "
                f"{saved.get(key)!r}, not {wanted.get(key)!r}; choose another --out"
            )
    return "done" if (run_dir / RESULT_FILE).is_file() else "partial"


def train_all(
    plans: list[Plan], *, train: Trainer = train, log: Log = _quiet, warn: Log = _quiet
) -> tuple[list[Path], list[str]]:
    """Train (or reuse, or resume) each planned model: (finished run dirs, failed models).

    ``train`` is :func:`convzoo.train.train` or anything called like it
    (``convzoo compare`` passes :func:`convzoo.training.train_run`, which also draws the
    plots). ``log`` gets the progress lines. A model whose training diverges, or whose
    options turn out unusable for it (say, a time budget too short for it), is
    reported through ``warn`` and the others still run. :class:`~convzoo.train.TrainingInterrupted` is raised as it comes: running the
    same comparison again resumes it.
    """
    finished: list[Path] = []
    failed: list[str] = []
    for i, plan in enumerate(plans, start=1):
        head = f"[{i}/{len(plans)}] {plan.name}"
        if plan.state == "done":
            log(f"{head}: already trained in {plan.run_dir}, reused")
            finished.append(plan.run_dir)
            continue
        started = time.perf_counter()
        try:
            if plan.state == "partial":
                log(f"{head}: resuming the interrupted run in {plan.run_dir}")
                cfg = TrainConfig(model=plan.model)
                for key in RESUME_OPTIONS:
                    if key in plan.overrides:
                        setattr(cfg, key, plan.overrides[key])
                train(cfg, resume=plan.run_dir, command=plan.command, started=started)
            else:
                log(f"{head}: training into {plan.run_dir}")
                train(plan.config, command=plan.command, started=started)
        except (TrainingDiverged, ConfigError) as exc:
            warn(f"{plan.name}: {exc}")
            failed.append(plan.name)
            continue
        finished.append(plan.run_dir)
    return finished, failed
