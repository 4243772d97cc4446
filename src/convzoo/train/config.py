"""The training configuration: defaults, TOML recipes, command-line overrides.

A :class:`TrainConfig` holds every choice of a run. ``config.json`` in the run
directory is its full dump after resolution (no ``None`` left where a value was
chosen automatically). Recipes are TOML files whose top-level keys are the same field
names; precedence is defaults < recipe < explicit options.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .schedule import SCHEDULES

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")
FAMILIES = ("alexnet", "vgg", "nin", "googlenet", "resnet", "densenet")
DEFAULT_EPOCHS = 10
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
DEFAULT_ONECYCLE_WARMUP = 0.3

# Keys a recipe may not set: they name the run, not how to train.
NOT_IN_RECIPES = ("model", "recipe", "out", "resume", "quiet")
# Options that may be given again when a run is resumed: they change where and how the
# rest of the run is computed, not what (device and threads may change the last bits).
# sync_bn may be switched on when a run continues on more processes than it began on.
RESUME_OPTIONS = ("quiet", "threads", "save_every_steps", "data_dir", "device", "sync_bn")


@dataclass
class TrainConfig:
    """Every option of a training run; ``None`` means "choose for me" until resolved."""

    model: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int | None = None  # default 10 unless a time budget is given
    time_budget: float | None = None  # seconds
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None  # sgd 0.05, adamw 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None  # sgd 5e-4, adamw 0.05
    schedule: str = "onecycle"
    warmup: float | None = None  # epochs (>= 1) or fraction of the run (< 1)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # for "step"
    gamma: float = 0.1  # for "step"
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    crop_padding: int = 0
    flip: bool = False
    erasing: float = 0.0
    ema: float = 0.0  # decay; 0 is off
    tta: bool = False
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None  # default: all cores (1 with deterministic), shared by ranks
    sync_bn: bool = False  # batch norm over the global batch in distributed runs
    limit_train: int | None = None
    val_size: float | None = None  # images (>= 1) or fraction (< 1)
    recipe: str | None = None
    out: str | None = None
    image_size: int | None = None
    small_input: bool | None = None
    width: float = 1.0
    save_every_steps: int = 0
    model_options: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ConfigError(_unknown_key_message(unknown[0], names, where))
        return cls(**data)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot be used."""
        check_config(self)


def _unknown_key_message(key: str, names, where: str) -> str:
    close = difflib.get_close_matches(key, sorted(names), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} in {where}{hint}"


def _positive(value, what: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    if value is None:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{what} must be a {'whole' if integer else ''} number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            f"{what} must be {'at least 0' if allow_zero else 'positive'}, got {value!r}"
        )


def check_config(cfg: TrainConfig) -> None:
    """Check types and ranges of every field."""
    if not isinstance(cfg.model, str) or not cfg.model:
        raise ConfigError("a model name is required")
    _positive(cfg.epochs, "epochs", integer=True)
    _positive(cfg.time_budget, "time budget")
    _positive(cfg.batch_size, "batch size", integer=True)
    _positive(cfg.lr, "learning rate")
    _positive(cfg.weight_decay, "weight decay", allow_zero=True)
    _positive(cfg.momentum, "momentum", allow_zero=True)
    _positive(cfg.warmup, "warm-up", allow_zero=True)
    _positive(cfg.label_smoothing, "label smoothing", allow_zero=True)
    _positive(cfg.mixup, "mixup alpha", allow_zero=True)
    _positive(cfg.cutmix, "cutmix alpha", allow_zero=True)
    _positive(cfg.crop_padding, "crop padding", integer=True, allow_zero=True)
    _positive(cfg.erasing, "erasing probability", allow_zero=True)
    _positive(cfg.ema, "EMA decay", allow_zero=True)
    _positive(cfg.threads, "threads", integer=True)
    _positive(cfg.limit_train, "limit-train", integer=True)
    _positive(cfg.val_size, "validation size", allow_zero=True)
    _positive(cfg.image_size, "image size", integer=True)
    _positive(cfg.width, "width")
    _positive(cfg.save_every_steps, "save-every-steps", integer=True, allow_zero=True)
    _positive(cfg.gamma, "gamma")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ConfigError(f"seed must be a whole number, got {cfg.seed!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"unknown optimizer {cfg.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}"
        )
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(
            f"unknown schedule {cfg.schedule!r}; expected one of {', '.join(SCHEDULES)}"
        )
    if cfg.device not in DEVICES:
        raise ConfigError(f"unknown device {cfg.device!r}; expected one of {', '.join(DEVICES)}")
    if cfg.label_smoothing >= 1:
        raise ConfigError(f"label smoothing must be under 1, got {cfg.label_smoothing}")
    if cfg.erasing > 1:
        raise ConfigError(f"erasing probability must be at most 1, got {cfg.erasing}")
    if cfg.ema >= 1:
        raise ConfigError(f"EMA decay must be under 1 (e.g. 0.999), got {cfg.ema}")
    if cfg.momentum >= 1:
        raise ConfigError(f"momentum must be under 1, got {cfg.momentum}")
    if not isinstance(cfg.milestones, list) or not all(
        isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 for m in cfg.milestones
    ):
        raise ConfigError(f"milestones must be a list of positive numbers, got {cfg.milestones!r}")
    if not isinstance(cfg.model_options, dict):
        raise ConfigError(f"model_options must be a table, got {cfg.model_options!r}")
    for name in (
        "nesterov",
        "flip",
        "tta",
        "amp",
        "channels_last",
        "compile",
        "deterministic",
        "sync_bn",
        "quiet",
    ):
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    if cfg.small_input is not None and not isinstance(cfg.small_input, bool):
        raise ConfigError(f"small_input must be true or false, got {cfg.small_input!r}")


# ---------------------------------------------------------------------------------------
# Recipes


def recipes_dir() -> Path:
    """Where recipes live: ``$CONVZOO_RECIPES``, else ``recipes/`` at the repository root."""
    env = os.environ.get("CONVZOO_RECIPES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "recipes"


def family_of(model: str) -> str | None:
    """'resnet18' -> 'resnet', 'vgg11_bn' -> 'vgg'; None for a name of no known family."""
    for fam in FAMILIES:
        if model.lower().startswith(fam):
            return fam
    return None


def dataset_key(dataset: str) -> str:
    """The recipes/ sub-folder of a dataset: its name, or 'folder' for image folders."""
    from ..data.datasets import DATASET_NAMES

    return dataset if dataset in DATASET_NAMES else "folder"


def find_recipe(name: str, dataset: str) -> Path:
    """A recipe name (recipes/<dataset>/<name>.toml) or a path to a TOML file."""
    as_path = Path(name).expanduser()
    if name.endswith(".toml") or os.sep in name or "/" in name:
        if as_path.is_file():
            return as_path
        raise ConfigError(f"recipe file {name} does not exist")
    folder = recipes_dir() / dataset_key(dataset)
    path = folder / f"{name}.toml"
    if path.is_file():
        return path
    known = sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []
    hint = f"; available for {dataset_key(dataset)}: {', '.join(known)}" if known else ""
    raise ConfigError(f"no recipe {name!r} in {folder}{hint}")


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a recipe file; ConfigError names any unknown key."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None
    data.pop("description", None)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in data:
        if key in NOT_IN_RECIPES:
            raise ConfigError(f"key {key!r} in recipe {path} is not allowed in a recipe")
        if key not in names:
            raise ConfigError(_unknown_key_message(key, names, f"recipe {path}"))
    if "time_budget" in data and isinstance(data["time_budget"], str):
        from .schedule import parse_duration

        data["time_budget"] = parse_duration(data["time_budget"])
    return data


def build_config(
    model: str,
    overrides: dict[str, Any] | None = None,
    *,
    recipe: str | None = None,
    log=None,
) -> TrainConfig:
    """Defaults < recipe < ``overrides``.

    ``recipe`` is a name, a path, ``"none"`` (no recipe), or None: for Fashion-MNIST the
    family's recipe ``recipes/fashion-mnist/<family>.toml`` is applied when it exists.
    ``log`` (a callable taking a line) says which recipe was applied.
    """
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in overrides:
        if key not in names:
            raise ConfigError(_unknown_key_message(key, names, "options"))
    dataset = overrides.get("dataset") or "fashion-mnist"
    settings: dict[str, Any] = {}
    applied = None
    if recipe and recipe.lower() != "none":
        path = find_recipe(recipe, dataset)
        settings = read_recipe(path)
        applied = recipe
    elif recipe is None and dataset == "fashion-mnist":
        family = family_of(model)
        path = recipes_dir() / "fashion-mnist" / f"{family}.toml"
        if family and path.is_file():
            settings = read_recipe(path)
            applied = f"fashion-mnist/{family}"
    if applied and log:
        log(f"recipe: {applied} ({path})")
    if "dataset" in settings and "dataset" not in overrides:
        dataset = settings["dataset"]
    model_options = dict(settings.pop("model_options", {}) or {})
    model_options.update(overrides.pop("model_options", {}) or {})
    # A recipe gives epochs; a time budget on the command line replaces it (the
    # recipe's epochs still scale the schedule) and explicit epochs replace a budget.
    if "epochs" in overrides and "time_budget" not in overrides:
        settings.pop("time_budget", None)
    merged = {**settings, **overrides, "model": model, "model_options": model_options}
    merged["recipe"] = applied
    cfg = TrainConfig.from_dict(merged, where="options")
    check_config(cfg)
    return cfg


def parse_option(text: str) -> tuple[str, Any]:
    """'aux_logits=true' -> ('aux_logits', True); values are TOML, else strings."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ConfigError(f"model option must look like KEY=VALUE, got {text!r}")
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key, parsed


def resume_overrides(given: TrainConfig) -> dict[str, Any]:
    """The options of ``given`` that a resumed run takes: ``quiet`` always, and each other
    :data:`RESUME_OPTIONS` field that differs from its default."""
    defaults = TrainConfig(model=given.model)
    out: dict[str, Any] = {"quiet": given.quiet}
    for name in RESUME_OPTIONS:
        value = getattr(given, name)
        if name != "quiet" and value != getattr(defaults, name):
            out[name] = value
    return out


def merge_resume(saved: dict[str, Any], overrides: dict[str, Any], *, where: str) -> TrainConfig:
    """The configuration a resumed run continues with: the ``saved`` one (a run's
    ``config.json`` or its checkpoint's), with the :data:`RESUME_OPTIONS` of
    ``overrides`` applied. Any other option given with a value different from the
    saved one is a :class:`ConfigError` naming its flag; ``out`` is the caller's to check.

    The one place that decides what may change on resume (``convzoo train --resume``
    and :func:`convzoo.train.train` both use it).
    """
    if not isinstance(saved, dict) or "model" not in saved:
        raise ConfigError(f"{where} holds no convzoo run configuration")
    for key, value in overrides.items():
        if key in RESUME_OPTIONS or key == "out":
            continue
        if key == "model_options":
            value = {**(saved.get("model_options") or {}), **value}
        if saved.get(key) != value:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{flag} cannot change when resuming (the run has {saved.get(key)!r}); "
                "leave it out, or start a new run with another --out"
            )
    cfg = TrainConfig.from_dict(dict(saved), where=where)
    for key in RESUME_OPTIONS:
        if key in overrides:
            setattr(cfg, key, overrides[key])
    return cfg
