"""The feature maps of one image, stage by stage: what each resolution of the network
keeps of the picture (Zeiler & Fergus, 2014, looked at the same maps layer by layer)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .figures import colorize, normalise

__all__ = ["feature_maps", "map_tiles"]


def feature_maps(
    model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """{name: the output (C, H, W) of that module} for a batch ``x`` of one image,
    in eval mode, without gradients, on the CPU."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in modules.items():

        def hook(m, inputs, output, name=name):
            o = output[0] if isinstance(output, (tuple, list)) else output
            out[name] = o[0].detach().float().cpu()

        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: out[name] for name in modules if name in out}


def map_tiles(maps: torch.Tensor, limit: int = 16) -> list[np.ndarray]:
    """RGB tiles of the ``limit`` channels with the largest mean activation, each
    scaled to [0, 1] on its own."""
    order = maps.mean(dim=(1, 2)).argsort(descending=True)[:limit]
    return [colorize(normalise(maps[int(i)].numpy()), "viridis") for i in order]
