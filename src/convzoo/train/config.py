"""The training configuration: defaults, TOML recipes, command-line overrides.

A :class:`TrainConfig` holds every choice of a run. ``config.json`` in the run
directory is its full dump after resolution (no ``None`` left where a value was
chosen automatically). Recipes are TOML files whose top-level keys are the same field
names; precedence is defaults < recipe < explicit options.

Each field declares itself once, in its metadata (an :class:`Option`): its help text,
its flag, its group, its choices and the values it takes (a :class:`Number` range, a
parser for text such as ``5m`` or ``10%``). ``convzoo train``'s flags, the subsets other
commands take (:mod:`convzoo.cli.options`), :func:`check_config` and :func:`to_argv`
are all derived from that declaration.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..units import parse_duration
from .options import (
    FRACTION_BELOW_ONE,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    SEED,
    Number,
    Option,
    option,
)
from .schedule import SCHEDULES

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")
NORMALIZATIONS = ("dataset", "imagenet")
FAMILIES = ("alexnet", "vgg", "nin", "googlenet", "resnet", "densenet")
DEFAULT_EPOCHS = 10
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
DEFAULT_ONECYCLE_WARMUP = 0.3
DEFAULT_EMA = 0.999  # the decay of a bare --ema

# Keys a recipe may not set: they name the run, not how to train.
NOT_IN_RECIPES = ("model", "recipe", "out", "resume", "quiet")
# Options that may be given again when a run is resumed: they change where and how the
# rest of the run is computed, not what (device and threads may change the last bits).
# sync_bn may be switched on when a run continues on more processes than it began on.
# The one list: `convzoo train --resume`, `convzoo compare` (reusing or resuming its
# runs) and the trainer all use it.
RESUME_OPTIONS = ("quiet", "threads", "save_every_steps", "data_dir", "device", "sync_bn")
# get_model arguments that have their own flag (or come from the dataset): a
# --model-option may not set them.
MODEL_ARGUMENT_FLAGS = {
    "width": "--width",
    "small_input": "--small-input / --no-small-input",
    "num_classes": None,  # from the dataset
    "in_channels": None,  # from the dataset
}
# Family options that only the small-input form takes (its stem): a recipe's value is
# dropped, with one line, when the run asks for the faithful form.
SMALL_INPUT_ONLY_OPTIONS = ("stem_stride",)
# Images at least this large get the faithful form when small_input is left to choose
# (the trainer's rule: small-input below 64 px).
FAITHFUL_FROM_PX = 64

# Option groups, in the order `convzoo train --help` shows them.
GROUPS = ("data", "length", "model", "optimisation", "augmentation", "machine", "run")


def _share(text: str) -> float:
    """'10%' -> 0.1; otherwise the number itself."""
    t = text.strip()
    if t.endswith("%"):
        value = NON_NEGATIVE.convert(t[:-1]) / 100
        if not 0 <= value < 1:
            raise ConfigError(f"expected a share under 100%, got {text!r}")
        return value
    return NON_NEGATIVE.convert(t)


def _val_size(text: str) -> float | int:
    """'5000' (images), '0.1' or '10%' (fraction of the training set)."""
    value = _share(text)
    return int(value) if value >= 1 and math.isfinite(value) and value == int(value) else value


def _whole_when_one_or_more(value: Any) -> str | None:
    if value >= 1 and value != int(value):
        return f"must be a whole number of images (>= 1) or a fraction (< 1), got {value!r}"
    return None


def _milestones(value: Any) -> str | None:
    if not isinstance(value, list) or not all(POSITIVE.problem(m) is None for m in value):
        return f"must be a list of positive numbers, got {value!r}"
    return None


def _model_options(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"must be a table of family options, got {value!r}"
    for key in value:
        if key in MODEL_ARGUMENT_FLAGS:
            flag = MODEL_ARGUMENT_FLAGS[key]
            fix = f"use {flag} instead" if flag else "it comes from the dataset"
            return f"may not set {key} ({fix})"
    return None


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"must be a non-empty text, got {value!r}"


@dataclass
class TrainConfig:
    """Every option of a training run; ``None`` means "choose for me" until resolved."""

    model: str = option(help="a model name (`convzoo list`)", action=None, extra=_text)
    dataset: str = option(
        "fashion-mnist",
        help="fashion-mnist, mnist, cifar10 or an image folder",
        group="data",
        metavar="DATASET",
        extra=_text,
    )
    data_dir: str | None = option(
        None,
        help="where to look for the dataset first",
        group="data",
        metavar="DIR",
        default_text="$CONVZOO_DATA, ~/.cache/convzoo, then system-wide copies",
        extra=_text,
    )
    epochs: int | None = option(
        None,
        help="epochs",
        group="length",
        number=POSITIVE_INT,
        metavar="EPOCHS",
        default_text=f"{DEFAULT_EPOCHS}, or the recipe's",
        exclusive="length",
    )
    time_budget: float | None = option(  # seconds
        None,
        help="wall-clock budget for the whole run: 90s, 5m, 1h30m or seconds",
        group="length",
        number=POSITIVE,
        parse=parse_duration,
        metavar="T",
        default_text="none",
        exclusive="length",
    )
    batch_size: int = option(
        128, help="images per step", group="optimisation", number=POSITIVE_INT, metavar="N"
    )
    optimizer: str = option("sgd", help="the optimizer", group="optimisation", choices=OPTIMIZERS)
    lr: float | None = option(
        None,
        help="peak learning rate",
        group="optimisation",
        number=POSITIVE,
        metavar="LR",
        default_text="0.05 with sgd, 0.001 with adamw",
    )
    momentum: float = option(
        0.9, help="SGD momentum", group="optimisation", number=FRACTION_BELOW_ONE, metavar="M"
    )
    nesterov: bool = option(True, help="Nesterov momentum", group="optimisation", action="bool")
    weight_decay: float | None = option(
        None,
        help="weight decay (on weights, not on biases and norms)",
        group="optimisation",
        number=NON_NEGATIVE,
        metavar="WD",
        default_text="5e-4 with sgd, 0.05 with adamw",
    )
    schedule: str = option(
        "onecycle", help="learning-rate schedule", group="optimisation", choices=SCHEDULES
    )
    warmup: float | None = option(  # epochs (>= 1) or fraction of the run (< 1)
        None,
        help="warm-up: epochs (>= 1) or a fraction of the run (0.1 or 10%)",
        group="optimisation",
        number=NON_NEGATIVE,
        parse=_share,
        metavar="W",
        default_text=f"{DEFAULT_ONECYCLE_WARMUP} of the run with onecycle, else 0",
    )
    milestones: list[float] = option(  # for "step"
        factory=lambda: [0.5, 0.75],
        help="fractions of the run where the step schedule multiplies lr by gamma",
        group="optimisation",
        action=None,
        extra=_milestones,
    )
    gamma: float = option(
        0.1, help="the step schedule's factor", group="optimisation", number=POSITIVE, action=None
    )
    label_smoothing: float = option(
        0.0, help="label smoothing", group="optimisation", number=FRACTION_BELOW_ONE, metavar="E"
    )
    mixup: float = option(
        0.0,
        help="mixup alpha (0 is off)",
        group="augmentation",
        number=NON_NEGATIVE,
        metavar="ALPHA",
    )
    cutmix: float = option(
        0.0,
        help="cutmix alpha (0 is off)",
        group="augmentation",
        number=NON_NEGATIVE,
        metavar="ALPHA",
    )
    crop_padding: int = option(
        0,
        help="random crop after zero padding by PX pixels (0 is off)",
        group="augmentation",
        number=NON_NEGATIVE_INT,
        metavar="PX",
    )
    flip: bool = option(False, help="random horizontal flips", group="augmentation", action="bool")
    erasing: float = option(
        0.0,
        help="random erasing probability",
        group="augmentation",
        number=PROBABILITY,
        metavar="P",
    )
    ema: float = option(  # decay; 0 is off
        0.0,
        help=f"keep an EMA of the weights, evaluated and saved (bare --ema: {DEFAULT_EMA}; "
        "0 is off)",
        group="optimisation",
        number=Number(float, low=0.5, low_closed=True, high=1, zero=True),
        metavar="DECAY",
        nargs="?",
        const=DEFAULT_EMA,
    )
    tta: bool = option(
        False,
        help="also report flip test-time augmentation at the final test",
        group="augmentation",
        action="bool",
    )
    amp: bool = option(
        False,
        help="mixed precision (bf16 on CPU; bf16 or fp16 on CUDA)",
        group="machine",
        action="bool",
    )
    channels_last: bool = option(
        False, help="channels-last memory layout", group="machine", action="bool"
    )
    compile: bool = option(False, help="torch.compile the model", group="machine", action="bool")
    seed: int = option(0, help="random seed", group="machine", number=SEED, metavar="SEED")
    deterministic: bool = option(
        False,
        help="deterministic algorithms (one thread unless --threads)",
        group="machine",
        action="bool",
    )
    device: str = option("auto", help="where to train", group="machine", choices=DEVICES)
    threads: int | None = option(
        None,
        help="CPU threads, shared by the processes of a torchrun",
        group="machine",
        number=POSITIVE_INT,
        metavar="N",
        default_text="all cores, 1 with --deterministic",
    )
    sync_bn: bool = option(
        False,
        help="under torchrun: batch norm over the global batch (SyncBatchNorm)",
        group="machine",
        action="bool",
    )
    limit_train: int | None = option(
        None,
        help="use only the first N training images (after the validation split)",
        group="data",
        number=POSITIVE_INT,
        metavar="N",
        default_text="all",
    )
    val_size: float | None = option(  # images (>= 1) or fraction (< 1)
        None,
        help="validation images carved from the training set: N, a fraction or N%",
        group="data",
        number=NON_NEGATIVE,
        parse=_val_size,
        extra=_whole_when_one_or_more,
        metavar="N",
        default_text="5000; 10% for folders",
    )
    recipe: str | None = option(
        None,
        help="recipes/<dataset>/NAME.toml, a .toml path, or 'none'",
        group="optimisation",
        metavar="NAME",
        default_text="the family's recipe for fashion-mnist",
    )
    out: str | None = option(
        None,
        help="run directory",
        group="run",
        metavar="RUN_DIR",
        default_text="runs/<model>-<dataset>-<time>",
        extra=_text,
    )
    image_size: int | None = option(
        None,
        help="resize images to PX x PX (e.g. 224 for the faithful forms)",
        group="data",
        number=POSITIVE_INT,
        metavar="PX",
        default_text="the dataset's size",
    )
    small_input: bool | None = option(
        None,
        help="the 28-32 px form",
        group="model",
        action="bool",
        default_text=f"on for images under {FAITHFUL_FROM_PX} px",
    )
    width: float = option(
        1.0, help="channel multiplier", group="model", number=POSITIVE, metavar="WIDTH"
    )
    save_every_steps: int = option(
        0,
        help="also checkpoint every N steps (0: every epoch only)",
        group="run",
        number=NON_NEGATIVE_INT,
        metavar="N",
    )
    model_options: dict[str, Any] = option(
        factory=dict,
        help="a family option, e.g. aux_logits=true (repeatable)",
        group="model",
        flag="--model-option",
        metavar="KEY=VALUE",
        action="append",
        default_text="none",
        extra=_model_options,
    )
    pretrained: str | None = option(
        None,
        help="start from these weights: a torchvision or timm file, a convzoo run or "
        "safetensors file, or 'torchvision' (its standard file in the torch hub cache)",
        group="model",
        metavar="PATH|RUN_DIR",
        default_text="random initialisation",
        extra=_text,
    )
    freeze_epochs: int = option(
        0,
        help="train only the classifier for the first N epochs (backbone frozen)",
        group="optimisation",
        number=NON_NEGATIVE_INT,
        metavar="N",
    )
    backbone_lr_scale: float = option(
        1.0,
        help="the backbone's learning rate as a fraction of the classifier's",
        group="optimisation",
        number=Number(float, low=0, high=1, high_closed=True),
        metavar="F",
    )
    freeze_bn: bool = option(
        False,
        help="batch norm in the backbone keeps its running statistics (for small batches)",
        group="optimisation",
        action="bool",
    )
    normalize: str = option(
        "dataset",
        help="per-channel normalisation: the training images' own statistics, or "
        "ImageNet's (for pretrained weights)",
        group="data",
        choices=NORMALIZATIONS,
    )
    center_crop: bool = option(
        False,
        help="image folders: resize the shorter side to --image-size / 0.875 and cut out "
        "the centre (torchvision's ImageNet evaluation), instead of stretching",
        group="data",
        action="bool",
    )
    quiet: bool = option(False, help="no progress output", group="run", action="store_true")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ConfigError(unknown_key_message(unknown[0], names, where))
        if "model" not in data:
            raise ConfigError(f"{where} names no model")
        return cls(**data)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot be used."""
        check_config(self)


def options() -> list[tuple[str, Option]]:
    """(field name, :class:`Option`) of every field, in declaration order."""
    return [(f.name, f.metadata["option"]) for f in dataclasses.fields(TrainConfig)]


def option_of(name: str) -> Option:
    """The :class:`Option` of the field ``name``."""
    for f in dataclasses.fields(TrainConfig):
        if f.name == name:
            return f.metadata["option"]
    raise KeyError(name)


def flag_of(name: str) -> str:
    """The command-line flag of a field: ``--lr``, ``--model-option``, ..."""
    return option_of(name).flag or "--" + name.replace("_", "-")


def field_default(name: str) -> Any:
    """The default of the field ``name``."""
    for f in dataclasses.fields(TrainConfig):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return None
    raise KeyError(name)


def parse_value(name: str, text: str) -> Any:
    """The value of the field ``name`` written as ``text`` on a command line, checked as
    :func:`check_config` checks it; :class:`ConfigError` says what is expected."""
    opt = option_of(name)
    if opt.parse is not None:
        value = opt.parse(text)
    elif opt.number is not None:
        value = opt.number.convert(text)
    else:
        value = text
    problem = opt.check(value)
    if problem:
        raise ConfigError(problem)
    return value


def unknown_key_message(key: str, names, where: str) -> str:
    close = difflib.get_close_matches(key, sorted(names), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} in {where}{hint}"


def field_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the field ``name`` (None when it can)."""
    return option_of(name).check(value)


def check_config(cfg: TrainConfig) -> None:
    """Check the type and range of every field, as each field's :class:`Option` declares;
    the message names the flag to change."""
    if not isinstance(cfg.model, str) or not cfg.model:
        raise ConfigError("a model name is required")
    for name, opt in options():
        value = getattr(cfg, name)
        problem = opt.check(value)
        if value is None and field_default(name) is not None:
            problem = f"needs a value (its default is {field_default(name)!r})"
        if problem:
            raise ConfigError(f"{flag_of(name)} {problem}")


def parse_option(text: str) -> tuple[str, Any]:
    """'aux_logits=true' -> ('aux_logits', True); values are TOML, else strings."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ConfigError(f"model option must look like KEY=VALUE, got {text!r}")
    problem = _model_options({key: None})
    if problem:
        raise ConfigError(f"--model-option {problem}")
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key, parsed


# ---------------------------------------------------------------------------------------
# Resume


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

    The one place that decides what may change on resume (``convzoo train --resume``,
    ``convzoo compare`` and :func:`convzoo.train.train` use it).
    """
    if not isinstance(saved, dict) or "model" not in saved:
        raise ConfigError(f"{where} holds no convzoo run configuration")
    for key, value in overrides.items():
        if key in RESUME_OPTIONS or key == "out":
            continue
        if key == "model_options":
            value = {**(saved.get("model_options") or {}), **value}
        if saved.get(key) != value:
            flag = flag_of(key) if key in {f.name for f in dataclasses.fields(TrainConfig)} else key
            raise ConfigError(
                f"{flag} cannot change when resuming (the run has {saved.get(key)!r}); "
                "leave it out, or start a new run with another --out"
            )
    cfg = TrainConfig.from_dict(dict(saved), where=where)
    for key in RESUME_OPTIONS:
        if key in overrides:
            setattr(cfg, key, overrides[key])
    return cfg
