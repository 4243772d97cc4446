"""Network in Network (Lin, Chen and Yan, "Network In Network", ICLR 2014).

Each ``mlpconv`` block is a convolution followed by two 1x1 convolutions (a small
multilayer perceptron slid over the image). The last block has one channel per
class and a global average pool turns it into the logits: no dense layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..registry import register_model
from .layers import ConvNet, conv_relu, init_weights, scale_width

# (channels, kernel, stride, padding) of the first three mlpconv blocks: d2l's plan.
PLAN = (
    (96, 11, 4, 0),
    (256, 5, 1, 2),
    (384, 3, 1, 1),
)


class MLPConv(nn.Sequential):
    """One mlpconv block (a Sequential, shown as one row by :func:`convzoo.summary`)."""


def mlpconv(
    channels: int,
    kernel_size: int,
    padding: int,
    stride: int = 1,
    max_pooling: bool = True,
    *,
    in_channels: int,
    pool_padding: int = 0,
    one_by_one: bool = True,
) -> MLPConv:
    """d2l's NiN block (``nin_block`` in d2l, ``mlpconv`` in the paper): conv(kernel_size) + conv(1x1) + conv(1x1), each with
    ReLU, then (if ``max_pooling``) a 3x3 max pool with stride 2 and ``pool_padding``.
    ``one_by_one=False`` leaves out the two 1x1 convolutions (an ablation).
    """
    layers = conv_relu(in_channels, channels, kernel_size, stride=stride, padding=padding)
    if one_by_one:
        layers += conv_relu(channels, channels, 1)
        layers += conv_relu(channels, channels, 1)
    if max_pooling:
        layers.append(nn.MaxPool2d(3, 2, pool_padding))
    return MLPConv(*layers)


class NiN(ConvNet):
    """Network in Network with d2l's plan.

    Faithful form (224 px): mlpconv 96 (11x11/4), 256 (5x5), 384 (3x3), each followed
    by a 3x3/2 max pool (224 -> 54 -> 26 -> 12 -> 5), dropout 0.5, a final mlpconv
    (3x3) with ``num_classes`` channels, global average pooling; no dense layer. This
    is d2l's ImageNet plan (section "Network in Network"); the paper's own ImageNet model is not
    given in the paper. He initialisation (fan in); the last 1x1 conv, which
    gives the class scores, starts from N(0, 0.01). Without batch norm, and with the
    ReLU on the class scores, it starts slowly with plain SGD; Adam or a warmup helps.

    Small-input form (28-32 px): the same blocks, but the first convolution is 3x3
    with stride 1 and padding 1, and the max pools have padding 1 (28 -> 14 -> 7 -> 4,
    32 -> 16 -> 8 -> 4).

    Ablations of the paper's two ideas: ``mlpconv_1x1=False`` drops the 1x1
    convolutions of every block (a plain convolutional network of the same plan), and
    ``head="dense"`` replaces the global average pooling head by a dense layer, as the
    paper's comparison in section 4.6 did: the last block then keeps the previous
    block's channels, and an adaptive average pool to its size at the design input
    (5x5 at 224 px, 4x4 small; the identity there) feeds one dense layer to the
    classes (N(0, 0.01) initialisation).

    ``width`` scales every channel count except the final ``num_classes`` channels.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        width: float = 1.0,
        dropout: float = 0.5,
        mlpconv_1x1: bool = True,
        head: str = "gap",
    ) -> None:
        super().__init__()
        self.small_input = small_input
        self.in_channels = in_channels
        blocks: list[nn.Module] = []
        c = in_channels
        pool_pad = 1 if small_input else 0
        for i, (out, k, s, p) in enumerate(PLAN):
            if small_input and i == 0:
                k, s, p = 3, 1, 1
            out = scale_width(out, width)
            blocks.append(
                mlpconv(out, k, p, s, in_channels=c, pool_padding=pool_pad, one_by_one=mlpconv_1x1)
            )
            c = out
        blocks.append(nn.Dropout(dropout))
        if head == "gap":
            last = mlpconv(
                num_classes, 3, 1, max_pooling=False, in_channels=c, one_by_one=mlpconv_1x1
            )
            blocks += [last, nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            output = last[-2]  # the conv that gives the class scores
        elif head == "dense":
            side = 4 if small_input else 5
            last = mlpconv(c, 3, 1, max_pooling=False, in_channels=c, one_by_one=mlpconv_1x1)
            output = nn.Linear(c * side * side, num_classes)
            blocks += [last, nn.AdaptiveAvgPool2d(side), nn.Flatten(), output]
        else:
            raise ModelError(f'head is "gap" or "dense", got {head!r}')
        self.net = nn.Sequential(*blocks)
        init_weights(self, conv_mode="fan_in", outputs=[output])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        # (N, C, H, W) -> (N, num_classes, 5, 5) at 224 px -> (N, num_classes)
        return self.net(x)


@register_model
def nin(**options: Any) -> NiN:
    """Network in Network, d2l's plan (Lin et al. 2014); options as :class:`NiN`."""
    model = NiN(**options)
    model.name = "nin"
    return model
