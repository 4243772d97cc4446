"""Recipes: TOML files of TrainConfig fields, applied as defaults < recipe < options."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..units import parse_duration

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


from .config import (
    FAITHFUL_FROM_PX,
    FAMILIES,
    NOT_IN_RECIPES,
    SMALL_INPUT_ONLY_OPTIONS,
    TrainConfig,
    check_config,
    field_problem,
    unknown_key_message,
)


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


def read_toml(path: Path, kind: str) -> dict[str, Any]:
    """The table of the TOML file ``path`` (a ``kind``: "recipe", "space file");
    ConfigError in one line when it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {kind} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{kind} {path} is not valid TOML: {exc}") from None


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a recipe file; ConfigError names any unknown key or unusable value."""
    path = Path(path)
    data = read_toml(path, "recipe")
    data.pop("description", None)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in data:
        if key in NOT_IN_RECIPES:
            raise ConfigError(f"key {key!r} in recipe {path} is not allowed in a recipe")
        if key not in names:
            raise ConfigError(unknown_key_message(key, names, f"recipe {path}"))
    if "time_budget" in data and isinstance(data["time_budget"], str):
        data["time_budget"] = parse_duration(data["time_budget"])
    for key, value in data.items():
        problem = field_problem(key, value)
        if problem:
            raise ConfigError(f"{key} in recipe {path} {problem}; fix the recipe or use --recipe")
    return data


def asks_for_faithful_form(overrides: dict[str, Any]) -> bool:
    """Whether options ask for the faithful form: ``--no-small-input``, or (left to
    choose) ``--image-size`` of at least :data:`FAITHFUL_FROM_PX`."""
    if "small_input" in overrides and overrides["small_input"] is not None:
        return overrides["small_input"] is False
    size = overrides.get("image_size")
    return isinstance(size, int) and not isinstance(size, bool) and size >= FAITHFUL_FROM_PX


def build_config(
    model: str,
    overrides: dict[str, Any] | None = None,
    *,
    recipe: str | None = None,
    log: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> TrainConfig:
    """Defaults < recipe < ``overrides``.

    ``recipe`` is a name, a path, ``"none"`` (no recipe), or None: for Fashion-MNIST the
    family's recipe ``recipes/fashion-mnist/<family>.toml`` is applied when it exists.
    ``log`` (a callable taking a line) says which recipe was applied; ``note`` (default
    ``log``) which of its small-input-only model options (:data:`SMALL_INPUT_ONLY_OPTIONS`)
    were left out because the options ask for the faithful form.
    """
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in overrides:
        if key not in names:
            raise ConfigError(unknown_key_message(key, names, "options"))
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
    if asks_for_faithful_form({**settings, **overrides}):
        dropped = [k for k in SMALL_INPUT_ONLY_OPTIONS if k in model_options]
        for key in dropped:
            model_options.pop(key)
        note = note or log
        if dropped and note:
            note(
                f"recipe {applied}: model option {', '.join(dropped)} left out (it applies "
                "to the small-input form only, and this run uses the faithful form)"
            )
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
