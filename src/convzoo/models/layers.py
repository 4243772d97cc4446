"""Bits shared by every family: width scaling, input checks, initialisation.

Each family's own blocks live in its own module; only what several families use is
here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ModelError

# A spatial operation on the main path: (kernel, stride, padding, ceil_mode).
Spatial = tuple[int, int, int, bool]


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded half up to an integer, at least 1.

    ``width=0.25`` gives the quarter-width networks the d2l book trained on a CPU.
    """
    return max(1, int(math.floor(channels * width + 0.5)))


def output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, ceil: bool = False
) -> int:
    """Output height of a convolution or pooling, by PyTorch's rule (also in ceil mode)."""
    span = size + 2 * padding - kernel
    if ceil:
        out = -(-span // stride) + 1
        # PyTorch drops a last window that would start in the right padding.
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return span // stride + 1


def min_input_size(ops: Iterable[Spatial]) -> int:
    """Smallest H=W that leaves at least one pixel after every operation in ``ops``."""
    ops = list(ops)
    size = 1
    while True:
        n = size
        for kernel, stride, padding, ceil in ops:
            n = output_size(n, kernel, stride, padding, ceil)
            if n < 1:
                break
        else:
            return size
        size += 1


def conv_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    batch_norm: bool = False,
    bias: bool = True,
    bn_eps: float = 1e-5,
) -> list[nn.Module]:
    """Conv, optional batch norm, ReLU: the layers, to be placed in a Sequential."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels, eps=bn_eps))
    layers.append(nn.ReLU(inplace=True))
    return layers


def init_weights(
    model: nn.Module, *, conv_mode: str = "fan_in", outputs: Iterable[nn.Module] = ()
) -> None:
    """He et al. (2015) initialisation, the default of every family here.

    Convolutions and hidden dense layers: Kaiming normal for ReLU (``conv_mode``
    "fan_in" keeps the forward signal's scale, which matters in the networks without
    batch norm; "fan_out" the backward one), zero bias. Batch norm: weight 1, bias 0.
    The output layers (``outputs``: the classifiers, dense or 1x1 conv) get
    N(0, 0.01) as in the AlexNet and VGG papers, so the first predictions are close
    to uniform. Deterministic given the torch seed. Nothing to do for a model built
    on the meta device (shapes only), which is then also quicker to build.
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm)):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in outputs:
        nn.init.normal_(m.weight, 0.0, 0.01)


class ConvNet(nn.Module):
    """Base of every convzoo model: its registered name and the input checks.

    Attributes:
        name: the registered name, e.g. ``"resnet18"``.
        small_input: True for the 28-32 px form.
        in_channels: channels the model was built for.
        min_input_size: smallest H=W the forward accepts.
    """

    name: str = "model"
    small_input: bool = False
    in_channels: int = 3
    min_input_size: int = 1

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ModelError` for a batch this model cannot take, saying what to do."""
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return
        if x.dim() != 4:
            raise ModelError(
                f"{self.name} expects a batch of images (N, C, H, W), got a tensor of "
                f"shape {tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)"
            )
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        if c != self.in_channels:
            raise ModelError(
                f"{self.name} was built for {self.in_channels}-channel images, got {c} "
                f"channels; build it with in_channels={c}"
            )
        m = self.min_input_size
        if h < m or w < m:
            if self.small_input:
                form, hint = "small-input", "resize the images to at least that size"
            else:
                form = "faithful"
                hint = "use small_input=True (--small-input) for 28-32 px images"
            raise ModelError(
                f"{self.name} needs images of at least {m}x{m} px in its {form} form, "
                f"got {h}x{w}; {hint}"
            )
