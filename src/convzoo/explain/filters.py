"""The first layer's filters: what the network looks for in raw pixels.

Krizhevsky et al. (2012, Fig. 3) showed AlexNet's 96 first-layer kernels as small
colour images; the same is done here for any family. A filter over three channels is
shown in colour, scaled to [0, 1] on its own; a filter over one channel (or the mean
over more) is shown on a diverging scale centred on zero, so positive weights and
negative ones are told apart.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .figures import colorize
from .layers import run_hooked

__all__ = ["first_conv", "filter_tiles"]


def first_conv(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """(name, module) of the first convolution that runs on the input batch ``x``."""
    names = {id(m): n for n, m in model.named_modules()}
    first: list[nn.Module] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, _: first.append(mod) if not first else None)
        for m in model.modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    ]
    run_hooked(model, x, handles)
    if not first:
        raise ConfigError(f"{getattr(model, 'name', 'the model')} has no convolution")
    return names[id(first[0])], first[0]


def filter_tiles(weight: torch.Tensor) -> list[np.ndarray]:
    """One RGB uint8 (k, k, 3) tile per output channel of a conv weight (O, I, k, k)."""
    w = weight.detach().float().cpu()
    tiles = []
    for f in w:  # (I, k, k)
        if f.shape[0] == 3:
            lo, hi = float(f.min()), float(f.max())
            rgb = (f - lo) / (hi - lo) if hi > lo else torch.zeros_like(f)
            tiles.append((rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        else:
            g = f.mean(dim=0)
            bound = float(g.abs().max()) or 1.0
            tiles.append(colorize((g.numpy() / bound + 1) / 2, "RdBu_r"))
    return tiles
