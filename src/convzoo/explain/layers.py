"""Which modules ``convzoo explain`` looks at: layers by name, stages, the default
Grad-CAM layer.

Names are those of ``convzoo summary``'s rows (:func:`convzoo.anatomy.blocks`: the
model's children with plain Sequentials opened up, such as ``layer4.1`` or
``features.10``); any other submodule name of ``model.named_modules()`` is accepted too.
Everything here is derived from the modules and one forward pass, never from a second
description of the network.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from ..anatomy import blocks
from ..errors import ConfigError

__all__ = ["Block", "default_layer", "find_layer", "require_maps", "spatial_blocks", "stages"]


@dataclass(frozen=True)
class Block:
    """One row of the summary that outputs feature maps: its name, module and (C, H, W)."""

    name: str
    module: nn.Module
    shape: tuple[int, int, int]


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def spatial_blocks(model: nn.Module, x: torch.Tensor) -> list[Block]:
    """The summary's blocks whose output is a (N, C, H, W) map, in the order they run,
    for the input batch ``x`` (one forward pass in eval mode, no gradients)."""
    names = {id(m): n for n, m in blocks(model)}
    seen: list[Block] = []
    handles = []

    def hook(mod, inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            seen.append(Block(names[id(mod)], mod, tuple(int(s) for s in out.shape[1:])))

    for _, mod in blocks(model):
        handles.append(mod.register_forward_hook(hook))
    run_hooked(model, x, handles)
    return seen


def default_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The last convolutional stage: the name of the last block that contains a
    convolution and outputs a map larger than 1x1 (as Selvaraju et al. 2017 advise,
    the last convolutional layer: high-level features that still keep their place)."""
    convs = [b for b in spatial_blocks(model, x) if _has_conv(b.module)]
    larger = [b for b in convs if b.shape[1] * b.shape[2] > 1]
    chosen = larger or convs
    if not chosen:
        raise ConfigError(f"{_model_name(model)} has no convolutional block to explain")
    return chosen[-1].name


def stages(model: nn.Module, x: torch.Tensor) -> list[Block]:
    """One block per resolution: the last block of each run of blocks whose feature maps
    have one spatial size (a stage, as the ResNet paper groups layers by output size).
    Maps of 1x1 (after global pooling) are left out: they show no place."""
    out: list[Block] = []
    for b in spatial_blocks(model, x):
        if b.shape[1] * b.shape[2] <= 1:
            continue
        if out and out[-1].shape[1:] == b.shape[1:]:
            out[-1] = b
        else:
            out.append(b)
    return out


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; :class:`ConfigError` naming a few valid names."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    valid = [n for n, m in blocks(model) if _has_conv(m)]
    close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.5)
    few = close or (valid[-3:] if len(valid) > 3 else valid)
    raise ConfigError(
        f"--layer {name!r} names no module of {_model_name(model)}; try one of "
        f"{', '.join(few)} (`convzoo summary` lists them)"
    )


def require_maps(model: nn.Module, module: nn.Module, name: str, x: torch.Tensor) -> None:
    """:class:`ConfigError` unless ``module`` outputs (N, C, H, W) feature maps for ``x``
    (Grad-CAM needs maps: a linear layer or a pooled vector has no place to show)."""
    shapes: list[tuple[int, ...]] = []

    def hook(mod, inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(out, torch.Tensor):
            shapes.append(tuple(out.shape[1:]))

    run_hooked(model, x, [module.register_forward_hook(hook)])
    if not shapes or len(shapes[-1]) != 3:
        what = "does not run" if not shapes else f"outputs {'x'.join(map(str, shapes[-1]))}"
        raise ConfigError(
            f"--layer {name} {what}, not feature maps; choose a convolutional block, "
            f"such as {default_layer(model, x)}"
        )


def _model_name(model: nn.Module) -> str:
    return str(getattr(model, "name", type(model).__name__))


def run_hooked(model: nn.Module, x: torch.Tensor, handles: list) -> None:
    """One forward of ``x`` in evaluation mode without gradients, for the forward hooks
    behind ``handles``; the hooks are removed and the model's mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
