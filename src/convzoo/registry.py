"""The model registry: one name per architecture, built through one interface.

Every family registers its constructors with :func:`register_model`; users build them
with :func:`get_model` and browse them with :func:`list_models`.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable

import torch
from torch import nn

from .artifacts import read_safetensors_header, read_safetensors_tensors
from .errors import CheckpointError, ConvzooError, ModelError

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


# -- models with their weights ----------------------------------------------------------


def check_state_dict(model: nn.Module, weights: dict, name: str) -> None:
    """:class:`CheckpointError` when ``weights`` (tensors, or anything with a ``shape``)
    do not fit ``model``: missing, unexpected and misshapen keys are named together."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [
        k
        for k in own
        if k in weights and tuple(own[k].shape) != tuple(getattr(weights[k], "shape", ()))
    ]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(
                f"missing {missing[0]}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            )
        if unexpected:
            detail.append(
                f"unexpected {unexpected[0]}"
                + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
            )
        if wrong:
            k = wrong[0]
            detail.append(
                f"{k} has shape {tuple(weights[k].shape)}, the model wants {tuple(own[k].shape)}"
            )
        raise CheckpointError(f"the weights do not fit {name}: {'; '.join(detail)}")


class _Shape:
    """Stands in for a tensor of a file's header: only its shape is known."""

    def __init__(self, shape) -> None:
        self.shape = tuple(shape)


def _build(name: str, options: dict, device: torch.device | None) -> nn.Module:
    if not isinstance(options, dict):
        raise CheckpointError(f"the options stored with {name}'s weights are not a mapping")
    try:
        if device is None:
            return get_model(name, **options)
        with device:
            return get_model(name, **options)
    except ConvzooError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot rebuild {name} from the options stored with its weights ({exc})"
        ) from None


def model_from_weights(name: str, options: dict, weights: dict) -> nn.Module:
    """``get_model(name, **options)`` with ``weights`` loaded, in eval mode.

    ``name`` and ``options`` come from a file, so the model is first built on the meta
    device (shapes only) and checked against ``weights``: options that ask for more
    than the file holds (say, a billion classes) are refused before any memory is
    spent on them. :class:`CheckpointError` (or ModelError) when they do not fit.
    """
    if not isinstance(name, str) or not isinstance(weights, dict):
        raise CheckpointError("the model name or weights are missing; not a convzoo checkpoint")
    check_state_dict(_build(name, options, torch.device("meta")), weights, name)
    model = _build(name, options, None)
    model.load_state_dict(weights)
    model.name = name
    return model.eval()


def model_from_checkpoint(ckpt: dict, *, use_ema: bool = True) -> nn.Module:
    """The checkpoint's model with its weights (EMA ones when present), in eval mode."""
    try:
        name = ckpt["model_name"]
        options = dict(ckpt["model_options"])
        weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint lacks {exc}; it is not a convzoo checkpoint") from None
    return model_from_weights(name, options, weights)


def model_from_safetensors(path) -> tuple[nn.Module, dict]:
    """(model in eval mode, its metadata) from a convzoo safetensors file.

    The header's shapes are checked against the model built on the meta device before
    a single tensor is read, so a small file that claims a huge model costs nothing.
    """
    meta, shapes = read_safetensors_header(path)
    name = meta["model_name"]
    try:
        check_state_dict(
            _build(name, meta["model_options"], torch.device("meta")),
            {k: _Shape(s) for k, s in shapes.items()},
            name,
        )
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    weights = read_safetensors_tensors(path)
    try:
        return model_from_weights(name, meta["model_options"], weights), meta
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
