"""What a tune run is asked to do (:class:`TuneSpec`), resolved into what every worker
needs (:class:`TunePlan`): the base configuration, the space, the study."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..train.config import TrainConfig
from ..train.recipes import build_config
from .space import SearchSpace, default_space_path, read_space
from .study import PRUNERS, SAMPLERS, StudyOptions, redacted

STUDY_DB = "study.db"
# Options that tune decides for each trial (or that name a run), never given by the user.
TUNE_DECIDES = ("model", "out", "resume", "recipe", "time_budget", "epochs", "seed", "quiet")


@dataclasses.dataclass
class TuneSpec:
    """The options of ``convzoo tune`` (see docs/tune.md).

    ``trial_budget`` and ``budget`` are seconds; ``options`` holds other
    :class:`~convzoo.train.config.TrainConfig` fields that every trial takes (dataset,
    data_dir, limit_train, val_size, device, threads, ...). ``seed`` seeds the sampler
    (worker k: seed + k) and is the training seed of every trial.
    """

    model: str
    trial_budget: float
    budget: float | None = None
    trials: int | None = None
    space: str | None = None
    recipe: str | None = None
    study: str | None = None
    storage: str | None = None
    workers: int = 1
    pruner: str = "hyperband"
    sampler: str = "tpe"
    seed: int = 0
    out: str | None = None
    confirm: int = 0
    heartbeat: int = 20
    grace: int = 60
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TunePlan:
    """A checked :class:`TuneSpec`: everything a worker process needs (picklable)."""

    spec: TuneSpec
    out: Path
    study: StudyOptions
    space: SearchSpace
    fixed: dict[str, Any]  # the TrainConfig options every trial takes
    base: TrainConfig  # the recipe (or the defaults) with the fixed options

    def trial_config(self, options: dict[str, Any], run_dir: Path | None = None) -> TrainConfig:
        """The configuration of a trial that takes ``options`` (from the space)."""
        merged = {**self.fixed, **options}
        merged["model_options"] = {
            **self.fixed.get("model_options", {}),
            **options.get("model_options", {}),
        }
        cfg = build_config(self.spec.model, merged, recipe=self.spec.recipe)
        if run_dir is not None:
            cfg.out = str(run_dir)
        return cfg

    def train_argv(self, options: dict[str, Any]) -> list[str]:
        """The ``convzoo train`` arguments of a trial (its time budget, no --out)."""
        from ..train.argv import to_argv

        given = {**self.fixed, **options}
        given["model_options"] = {
            **self.fixed.get("model_options", {}),
            **options.get("model_options", {}),
        }
        given.pop("quiet", None)
        return to_argv(self.spec.model, given, recipe=self.spec.recipe)


def plan(spec: TuneSpec) -> TunePlan:
    """Check ``spec`` and resolve it; every mistake is one :class:`ConfigError` line."""
    if spec.trial_budget is None or spec.trial_budget <= 0:
        raise ConfigError("--trial-budget must be a positive duration such as 2m")
    if (spec.budget is None) == (spec.trials is None):
        raise ConfigError("give one of --budget (e.g. 1h) or --trials N")
    if spec.budget is not None and spec.budget < spec.trial_budget:
        raise ConfigError("--budget must be at least one --trial-budget")
    if spec.trials is not None and spec.trials < 1:
        raise ConfigError("--trials must be at least 1")
    if spec.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if spec.confirm < 0:
        raise ConfigError("--confirm must be 0 or more")
    if spec.pruner not in PRUNERS:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}")
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}")
    if spec.heartbeat < 1 or spec.grace <= spec.heartbeat:
        raise ConfigError("--heartbeat must be >= 1 second and --grace longer than it")
    for key in spec.options:
        if key in TUNE_DECIDES:
            raise ConfigError(f"{key} is decided by tune for each trial; leave it out")
    fixed = {k: v for k, v in spec.options.items() if v is not None}
    fixed.update(time_budget=float(spec.trial_budget), seed=spec.seed, quiet=True)
    if spec.workers > 1 and "threads" not in fixed:
        from ..device import available_cores

        fixed["threads"] = max(1, available_cores() // spec.workers)
    base = build_config(spec.model, fixed, recipe=spec.recipe)
    dataset = base.dataset
    space = read_space(spec.space or default_space_path(spec.model, dataset))
    name = spec.study or _default_study_name(spec.model, dataset, spec.recipe)
    out = Path(spec.out) if spec.out else Path("runs") / f"tune-{name}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    storage = spec.storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    if "://" not in storage:
        raise ConfigError(
            f"--storage must be an SQLAlchemy URL such as postgresql://user@host/db, "
            f"got {redacted(storage)!r}"
        )
    options = StudyOptions(storage, name, spec.sampler, spec.pruner, spec.seed,
                           spec.heartbeat, spec.grace)  # fmt: skip
    return TunePlan(spec, out, options, space, fixed, base)


def _default_study_name(model: str, dataset: str, recipe: str | None) -> str:
    name = f"{model}-{Path(dataset).name}" + ("-no-recipe" if recipe == "none" else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
