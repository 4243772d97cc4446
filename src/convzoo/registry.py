"""The model registry: one name per architecture, built through one interface.

Every family registers its constructors with :func:`register_model`; users build them
with :func:`get_model` and browse them with :func:`list_models`. Importing ``convzoo``
imports :mod:`convzoo.models`, which registers every family; the registry itself imports
no model.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
from collections.abc import Callable

import torch
from torch import nn

from .artifacts import read_safetensors_header, read_safetensors_tensors
from .device import available_memory
from .errors import CheckpointError, ConvzooError, ModelError
from .pretrained import load_pretrained
from .units import gib

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


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by an fnmatch pattern."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def closest_names(name: str, n: int = 3) -> list[str]:
    """Registered names that look most like ``name``."""
    close = difflib.get_close_matches(name, list(_REGISTRY), n=n, cutoff=0.4)
    return close or [m for m in sorted(_REGISTRY) if m.startswith(name[:3])][:n]


def check_model_name(name: str) -> None:
    """Raise :class:`ModelError` naming the closest matches if ``name`` is unknown."""
    if name not in _REGISTRY:
        hint = closest_names(name)
        did_you_mean = f"; did you mean {', '.join(hint)}?" if hint else ""
        raise ModelError(f"unknown model {name!r}{did_you_mean} (`convzoo list` shows them all)")


def _positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} must be a positive integer, got {value!r}")


def _construct(name: str, options: dict) -> nn.Module:
    """``_REGISTRY[name](**options)``; a bad option is one :class:`ModelError`."""
    try:
        return _REGISTRY[name](**options)
    except ConvzooError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        # An unknown option, a value of the wrong type or out of a layer's range, or
        # sizes beyond what a tensor can hold.
        lines = str(exc).strip().splitlines()
        detail = " ".join(lines[0].split())[:160] if lines else ""
        if isinstance(exc, TypeError) and "keyword argument" in detail:
            raise ModelError(f"{name}: {detail}") from None
        raise ModelError(
            f"{name}: cannot build it with these options ({type(exc).__name__}: {detail}); "
            "use smaller values"
        ) from None


def get_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    small_input: bool = False,
    width: float = 1.0,
    weights: str | os.PathLike | None = None,
    weights_source: str | None = None,
    **family_options,
) -> nn.Module:
    """Build a registered model, with pretrained ``weights`` when given.

    Args:
        name: a name from :func:`list_models`, e.g. ``"resnet18"``.
        num_classes: size of the output layer.
        in_channels: channels of the input images (1 for Fashion-MNIST).
        small_input: the 28-32 px form: same blocks, a stem and pooling suited to
            small images (as the ResNet and DenseNet papers did for CIFAR).
        width: multiplier for every channel count.
        weights: a torchvision ``.pth``, a timm ``.pth``/``.safetensors``, a convzoo run
            directory, checkpoint or safetensors file, or ``"torchvision"`` (the standard
            file in the torch hub cache): see :func:`convzoo.pretrained.load_pretrained`.
            What it did is ``model.pretrained`` (a :class:`~convzoo.pretrained.LoadReport`).
        weights_source: "torchvision", "timm" or "convzoo" when the file's naming is
            known (default: read from its names).
        family_options: options of the family, e.g. ``aux_logits=True`` for GoogLeNet.

    Every value is bounded before memory is spent on it: the model is first built on
    the meta device (shapes only), and :class:`ModelError` says so when its parameters
    alone would not fit in the memory available (:func:`available_memory`), or when
    its sizes overflow what a tensor can hold. A model asked for on the meta device
    (``with torch.device("meta")``) costs no memory: it is built once, and refused
    only when its sizes overflow (so that a file's shapes can be compared with it, and
    :func:`convzoo.anatomy.check_memory` can say what a run of it would need).
    """
    check_model_name(name)
    _positive_int(num_classes, "num_classes")
    _positive_int(in_channels, "in_channels")
    if (
        isinstance(width, bool)
        or not isinstance(width, (int, float))
        or not math.isfinite(width)
        or not width > 0
    ):
        raise ModelError(f"width must be a positive number, got {width!r}")
    options = dict(
        num_classes=num_classes,
        in_channels=in_channels,
        small_input=bool(small_input),
        width=float(width),
        **family_options,
    )
    if torch.empty(0).device.type == "meta":
        return _construct(name, options)
    with torch.device("meta"):
        model = _construct(name, options)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    free = available_memory()
    if params > free:
        raise ModelError(
            f"{name} with width={width:g}, num_classes={num_classes}, in_channels="
            f"{in_channels} would hold {gib(params)} of parameters, more than the "
            f"{gib(free)} of memory available; lower --width, --num-classes or the "
            "input channels"
        )
    model = _construct(name, options)
    if weights is not None:
        model.pretrained = load_pretrained(model, name, weights, source=weights_source)
    return model


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
