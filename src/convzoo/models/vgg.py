"""VGG (Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale
Image Recognition", ICLR 2015).

A VGG is a stack of ``vgg_block``s (some 3x3 convolutions, then a 2x2 max pool)
followed by three dense layers; the configurations A, B, D and E of the paper's
Table 1 differ only in how many convolutions each block has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..registry import register_model
from .layers import ConvNet, conv_relu, init_weights, scale_width

# (num_convs, channels) per block: the paper's Table 1.
CONFIGS: dict[str, tuple[tuple[int, int], ...]] = {
    "A": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),  # VGG-11
    "B": ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),  # VGG-13
    "D": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),  # VGG-16
    "E": ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),  # VGG-19
}
VARIANTS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
DENSE = (4096, 4096)


class VGGBlock(nn.Sequential):
    """One VGG block (a Sequential, shown as one row by :func:`convzoo.summary`)."""


def vgg_block(
    num_convs: int,
    channels: int,
    *,
    in_channels: int,
    batch_norm: bool = False,
    ceil_mode: bool = False,
) -> VGGBlock:
    """d2l's ``vgg_block`` (section "Networks Using Blocks (VGG)"): ``num_convs`` 3x3 convolutions (padding 1) with ReLU,
    then a 2x2 max pool with stride 2 that halves the height and width.

    ``batch_norm`` puts batch norm between each convolution and its ReLU (the common
    ``_bn`` variant, which the paper predates; the convolutions keep their bias).
    ``ceil_mode`` rounds odd sizes up when pooling (the small-input form uses it).
    """
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(num_convs):
        layers += conv_relu(c, channels, 3, padding=1, batch_norm=batch_norm)
        c = channels
    layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode))
    return VGGBlock(*layers)


def vgg_stack(
    architecture: Sequence[tuple[int, int]],
    *,
    in_channels: int,
    batch_norm: bool = False,
    ceil_mode: bool = False,
) -> nn.Sequential:
    """d2l's ``vgg_stack``: one :func:`vgg_block` per ``(num_convs, channels)``."""
    blocks = []
    c = in_channels
    for num_convs, channels in architecture:
        blocks.append(
            vgg_block(
                num_convs, channels, in_channels=c, batch_norm=batch_norm, ceil_mode=ceil_mode
            )
        )
        c = channels
    return nn.Sequential(*blocks)


class VGG(ConvNet):
    """VGG with a given architecture (a tuple of ``(num_convs, channels)``).

    Faithful form (224 px): the paper's five blocks (224 -> 7), an adaptive 7x7
    average pool (as in torchvision; the identity at 224 px, so larger images work),
    then 25088 -> 4096 -> 4096 -> classes with ReLU and dropout 0.5. He
    initialisation (fan in) for the convolutions and hidden dense layers, N(0, 0.01)
    for the output layer: the paper trained configuration A from N(0, 0.01) and
    initialised deeper ones from it, noting that Glorot-style initialisation works
    without that; N(0, 0.01) everywhere does not train the deep or narrow forms.

    Small-input form (28-32 px): the same blocks and dense layers, but the max pools
    round up (``ceil_mode``), so 28 px goes 28 -> 14 -> 7 -> 4 -> 2 -> 1 where five
    plain 2x poolings would leave nothing; a global average pool then feeds the
    dense layers 512 features instead of 512*7*7.

    ``width`` scales every convolution and both hidden dense layers.
    """

    def __init__(
        self,
        architecture: Sequence[tuple[int, int]],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        width: float = 1.0,
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.small_input = small_input
        self.in_channels = in_channels
        arch = tuple((n, scale_width(c, width)) for n, c in architecture)
        self.features = vgg_stack(
            arch, in_channels=in_channels, batch_norm=batch_norm, ceil_mode=small_input
        )
        side = 1 if small_input else 7
        self.avgpool = nn.AdaptiveAvgPool2d(side)
        head: list[nn.Module] = [nn.Flatten()]
        n = arch[-1][1] * side * side
        for d in DENSE:
            d = scale_width(d, width)
            head += [nn.Linear(n, d), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            n = d
        head.append(nn.Linear(n, num_classes))
        self.classifier = nn.Sequential(*head)
        init_weights(self, conv_mode="fan_in", outputs=[self.classifier[-1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.features(x)  # (N, 512, 7, 7) at 224 px; (N, 512, 1, 1) small at 28-32 px
        x = self.avgpool(x)
        return self.classifier(x)  # (N, num_classes)


def _vgg(name: str, **options: Any) -> VGG:
    base = name.removesuffix("_bn")
    options.setdefault("batch_norm", name.endswith("_bn"))
    model = VGG(CONFIGS[VARIANTS[base]], **options)
    model.name = name
    return model


@register_model
def vgg11(**options: Any) -> VGG:
    """VGG-11, configuration A; options as :class:`VGG`."""
    return _vgg("vgg11", **options)


@register_model
def vgg13(**options: Any) -> VGG:
    """VGG-13, configuration B; options as :class:`VGG`."""
    return _vgg("vgg13", **options)


@register_model
def vgg16(**options: Any) -> VGG:
    """VGG-16, configuration D; options as :class:`VGG`."""
    return _vgg("vgg16", **options)


@register_model
def vgg19(**options: Any) -> VGG:
    """VGG-19, configuration E; options as :class:`VGG`."""
    return _vgg("vgg19", **options)


@register_model
def vgg11_bn(**options: Any) -> VGG:
    """VGG-11 with batch norm after every convolution; options as :class:`VGG`."""
    return _vgg("vgg11_bn", **options)


@register_model
def vgg13_bn(**options: Any) -> VGG:
    """VGG-13 with batch norm after every convolution; options as :class:`VGG`."""
    return _vgg("vgg13_bn", **options)


@register_model
def vgg16_bn(**options: Any) -> VGG:
    """VGG-16 with batch norm after every convolution; options as :class:`VGG`."""
    return _vgg("vgg16_bn", **options)


@register_model
def vgg19_bn(**options: Any) -> VGG:
    """VGG-19 with batch norm after every convolution; options as :class:`VGG`."""
    return _vgg("vgg19_bn", **options)
