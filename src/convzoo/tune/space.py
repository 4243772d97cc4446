"""Search spaces: TOML files of ranges over recipe keys, read into Optuna distributions.

A space file sits beside the family's recipe, in ``recipes/<dataset>/spaces/<family>.toml``.
Each top-level key is a :class:`~convzoo.train.config.TrainConfig` field that a recipe
may set; ``[model_options]`` holds the family options. A key's table is one of

    lr = { low = 0.02, high = 0.8, log = true }     # a range (log scale: both bounds > 0)
    batch_size = { choices = [128, 256, 512] }       # a list of values
    crop_padding = { low = 0, high = 2 }             # whole-number bounds: an int range
    lr = { sgd = { low = 0.02, high = 0.8, log = true },
           adamw = { low = 3e-4, high = 5e-3, log = true } }   # by optimizer

``step`` spaces a range evenly. A key given per optimizer is a separate Optuna
parameter per optimizer (``lr.sgd``, ``lr.adamw``), since the two take different
scales. Every bound and choice is checked as the recipe's value would be
(:func:`~convzoo.train.config.field_problem`); a mistake is one :class:`ConfigError`
line. Optuna: Akiba et al., "Optuna: A Next-generation Hyperparameter Optimization
Framework", KDD 2019.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..train.config import (
    DEFAULT_LR,
    DEFAULT_ONECYCLE_WARMUP,
    DEFAULT_WEIGHT_DECAY,
    NOT_IN_RECIPES,
    OPTIMIZERS,
    TrainConfig,
    field_problem,
    option_of,
    unknown_key_message,
)
from ..train.recipes import dataset_key, family_of, read_toml, recipes_dir

SPACES_FOLDER = "spaces"
# Fields a space may not range over: they say where and how long a trial runs, which
# the tune command decides for every trial alike.
NOT_SEARCHED = (
    *NOT_IN_RECIPES,
    "dataset",
    "data_dir",
    "epochs",
    "time_budget",
    "seed",
    "device",
    "threads",
    "deterministic",
    "sync_bn",
    "save_every_steps",
    "limit_train",
    "val_size",
    "model_options",
    "milestones",
)
SPEC_KEYS = ("low", "high", "log", "step", "choices")


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched value: ``key`` is the config field (``model_options.NAME`` for a
    family option); ``optimizer`` set when the range is the one for that optimizer."""

    key: str
    optimizer: str | None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    @property
    def name(self) -> str:
        """The Optuna parameter name."""
        return f"{self.key}.{self.optimizer}" if self.optimizer else self.key

    def distribution(self):
        import optuna.distributions as D

        if self.choices is not None:
            return D.CategoricalDistribution(list(self.choices))
        if self.integer:
            return D.IntDistribution(int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))  # fmt: skip
        return D.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {list(self.choices)}"
        scale = ", log" if self.log else ""
        return f"{self.name} in [{self.low:g}, {self.high:g}{scale}]"


@dataclasses.dataclass
class SearchSpace:
    """The parameters of a space file, in the order they are sampled (optimizer first)."""

    params: list[Param]
    path: Path | None = None
    description: str = ""

    def sample(self, trial, base: TrainConfig) -> dict[str, Any]:
        """The options of one trial (TrainConfig field values; family options under
        ``model_options``), drawn from ``trial`` (an Optuna trial)."""
        out: dict[str, Any] = {}
        optimizer = base.optimizer
        for p in self.params:
            if p.optimizer is not None and p.optimizer != optimizer:
                continue
            value = _suggest(trial, p)
            if p.key == "optimizer":
                optimizer = value
            _put(out, p.key, value)
        return out

    def from_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The options of a finished trial, from its Optuna parameters."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in params:
                _put(out, p.key, params[p.name])
        return out

    def params_of(self, cfg: TrainConfig) -> tuple[dict[str, Any], list[str]]:
        """The Optuna parameters that reproduce ``cfg`` (a recipe) where the space holds
        its values, and a note for each value outside the space (left to the sampler)."""
        found: dict[str, Any] = {}
        notes: list[str] = []
        optimizer = cfg.optimizer
        for p in self.params:
            if p.optimizer is not None and p.optimizer != optimizer:
                continue
            value = resolved_value(cfg, p.key)
            if p.contains(value):
                found[p.name] = value
            else:
                notes.append(f"{p.key} = {value!r} is outside the space ({p.describe()})")
        return found, notes


def _suggest(trial, p: Param):
    if p.choices is not None:
        return trial.suggest_categorical(p.name, list(p.choices))
    if p.integer:
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log,
                                 step=int(p.step or 1))  # fmt: skip
    return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if key.startswith("model_options."):
        out.setdefault("model_options", {})[key.split(".", 1)[1]] = value
    else:
        out[key] = value


def resolved_value(cfg: TrainConfig, key: str) -> Any:
    """The value ``cfg`` trains with for ``key``, with the trainer's choices for the
    values left to it (lr, weight decay and warm-up by optimizer and schedule)."""
    if key.startswith("model_options."):
        return cfg.model_options.get(key.split(".", 1)[1])
    value = getattr(cfg, key)
    if value is None and key == "lr":
        return DEFAULT_LR[cfg.optimizer]
    if value is None and key == "weight_decay":
        return DEFAULT_WEIGHT_DECAY[cfg.optimizer]
    if value is None and key == "warmup":
        return DEFAULT_ONECYCLE_WARMUP if cfg.schedule == "onecycle" else 0.0
    return value


# ---------------------------------------------------------------------------- reading


def default_space_path(model: str, dataset: str) -> Path:
    """``recipes/<dataset>/spaces/<family>.toml``; ConfigError when there is none."""
    family = family_of(model)
    path = recipes_dir() / dataset_key(dataset) / SPACES_FOLDER / f"{family}.toml"
    if family is None or not path.is_file():
        raise ConfigError(
            f"no search space for {model} on {dataset} ({path}); give one with --space FILE"
        )
    return path


def read_space(path: str | os.PathLike) -> SearchSpace:
    """Read and check a space file (see the module's docstring)."""
    path = Path(path)
    where = f"space {path}"
    data = read_toml(path, "space file")
    description = data.pop("description", "")
    family_options = data.pop("model_options", {})
    if not isinstance(family_options, dict):
        raise ConfigError(f"model_options in {where} must be a table of ranges")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    params: list[Param] = []
    for key, spec in data.items():
        if key in NOT_SEARCHED and key in names:
            raise ConfigError(
                f"key {key!r} in {where} cannot be searched (the tune options set it)"
            )
        if key not in names:
            raise ConfigError(unknown_key_message(key, names - set(NOT_SEARCHED), where))
        params += _params(key, spec, where)
    for name, spec in family_options.items():
        params += _params(f"model_options.{name}", spec, where)
    if not params:
        raise ConfigError(f"{where} has no ranges")
    params.sort(key=lambda p: p.key != "optimizer")
    return SearchSpace(params, path, str(description))


def _params(key: str, spec: Any, where: str) -> list[Param]:
    if not isinstance(spec, dict):
        raise ConfigError(f"{key} in {where} must be a table such as {{ low = .., high = .. }}")
    if spec and all(k in OPTIMIZERS for k in spec):
        if key == "optimizer":
            raise ConfigError(f"optimizer in {where} cannot depend on the optimizer")
        return [_param(key, sub, where, optimizer) for optimizer, sub in spec.items()]
    return [_param(key, spec, where, None)]


def _param(key: str, spec: Any, where: str, optimizer: str | None) -> Param:
    label = f"{key}.{optimizer}" if optimizer else key
    if not isinstance(spec, dict):
        raise ConfigError(f"{label} in {where} must be a table such as {{ low = .., high = .. }}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(unknown_key_message(unknown[0], SPEC_KEYS, f"{label} in {where}"))
    field = None if key.startswith("model_options.") else key

    def check(value: Any) -> None:
        problem = field_problem(field, value) if field else None
        if problem:
            raise ConfigError(f"{label} in {where}: {value!r} {problem}")

    if "choices" in spec:
        extra = [k for k in spec if k != "choices"]
        if extra:
            raise ConfigError(f"{label} in {where}: give choices or a range, not both ({extra[0]})")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{label} in {where}: choices must be a non-empty list")
        for value in choices:
            if isinstance(value, (dict, list)):
                raise ConfigError(f"{label} in {where}: a choice must be a single value")
            check(value)
        return Param(key, optimizer, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{label} in {where} needs low and high, or choices")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for value in (low, high, step):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{label} in {where}: bounds and step must be numbers, got {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{label} in {where}: log must be true or false")
    if low > high:
        raise ConfigError(f"{label} in {where}: empty range (low {low:g} > high {high:g})")
    if log and low <= 0:
        raise ConfigError(f"{label} in {where}: a log range needs bounds > 0, got low {low:g}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{label} in {where}: step must be > 0, and not with log")
    integer = all(isinstance(v, int) for v in (low, high, step) if v is not None)
    if field:
        integer = option_of(field).number is not None and option_of(field).number.kind is int
        if integer and not all(isinstance(v, int) for v in (low, high)):
            raise ConfigError(f"{label} in {where}: {key} takes whole numbers")
    check(low)
    check(high)
    return Param(key, optimizer, low=low, high=high, log=log, step=step, integer=integer)
