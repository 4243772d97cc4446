"""Command lines from configurations: the ``convzoo train`` flags that give a set of
:class:`~convzoo.train.config.TrainConfig` values (for the run's report, a comparison's
or an ablation's commands, tune's best trials), written from the same option metadata
that generates the parser, so the two cannot disagree."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from .config import flag_of, options

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["format_option", "option_argv", "to_argv"]


def format_option(key: str, value: Any) -> str:
    """The ``KEY=VALUE`` text that :func:`parse_option` reads back as ``(key, value)``."""
    if isinstance(value, str):
        try:
            reread = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            reread = value
        if reread == value and "\n" not in value:
            return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def option_argv(overrides: dict[str, Any], *, names: Iterable[str] | None = None) -> list[str]:
    """The flags that give ``overrides`` (TrainConfig field values) on a command line,
    in declaration order; ``names`` keeps only those fields."""
    keep = set(overrides if names is None else names)
    argv: list[str] = []
    for name, opt in options():
        if name not in overrides or name not in keep or opt.action is None:
            continue
        value, flag = overrides[name], flag_of(name)
        if opt.action in ("bool", "store_true"):
            if value is None:
                continue
            if value or opt.action == "bool":
                argv.append(flag if value else "--no-" + flag[2:])
        elif opt.action == "append":
            for key, item in (value or {}).items():
                argv += [flag, format_option(key, item)]
        elif value is not None:
            argv += [flag, value if isinstance(value, str) else repr(value)]
    return argv


def to_argv(
    model: str,
    overrides: dict[str, Any],
    *,
    recipe: str | None = None,
    resume: str | os.PathLike | None = None,
) -> list[str]:
    """The ``convzoo train`` arguments (without ``convzoo``) that build the same
    configuration as ``build_config(model, overrides, recipe=recipe)``."""
    argv = ["train", model, *option_argv(overrides)]
    if recipe is not None:
        argv += ["--recipe", recipe]
    if resume is not None:
        argv += ["--resume", str(resume)]
    return argv
