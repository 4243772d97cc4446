"""The model registry: one name per architecture, built through one interface.

Every family registers its constructors with :func:`register_model`; users build them
with :func:`get_model` and browse them with :func:`list_models`.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable

from torch import nn

from .errors import ModelError

ModelFn = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFn] = {}


def register_model(fn: ModelFn | None = None, *, name: str | None = None):
    """Register a model constructor under ``name`` (default: the function's name).

    Usable as ``@register_model`` or ``@register_model(name="...")``. Registering a
    name twice is an error.
    """

    def add(f: ModelFn) -> ModelFn:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = f
        return f

    return add(fn) if fn is not None else add


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (importing the package registers every family)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by an fnmatch pattern."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def closest_names(name: str, n: int = 3) -> list[str]:
    """Registered names that look most like ``name``."""
    _ensure_loaded()
    close = difflib.get_close_matches(name, list(_REGISTRY), n=n, cutoff=0.4)
    return close or [m for m in sorted(_REGISTRY) if m.startswith(name[:3])][:n]


def check_model_name(name: str) -> None:
    """Raise :class:`ModelError` naming the closest matches if ``name`` is unknown."""
    _ensure_loaded()
    if name not in _REGISTRY:
        hint = closest_names(name)
        did_you_mean = f"; did you mean {', '.join(hint)}?" if hint else ""
        raise ModelError(f"unknown model {name!r}{did_you_mean} (`convzoo list` shows them all)")


def get_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    small_input: bool = False,
    width: float = 1.0,
    **family_options,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, e.g. ``"resnet18"``.
        num_classes: size of the output layer.
        in_channels: channels of the input images (1 for Fashion-MNIST).
        small_input: the 28-32 px form: same blocks, a stem and pooling suited to
            small images (as the ResNet and DenseNet papers did for CIFAR).
        width: multiplier for every channel count.
        family_options: options of the family, e.g. ``aux_logits=True`` for GoogLeNet.
    """
    check_model_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ModelError(f"in_channels must be a positive integer, got {in_channels!r}")
    if (
        isinstance(width, bool)
        or not isinstance(width, (int, float))
        or not math.isfinite(width)
        or not width > 0
    ):
        raise ModelError(f"width must be a positive number, got {width!r}")
    try:
        return _REGISTRY[name](
            num_classes=num_classes,
            in_channels=in_channels,
            small_input=bool(small_input),
            width=float(width),
            **family_options,
        )
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ModelError(f"{name}: {exc}") from None
        raise
