"""AlexNet (Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks", NeurIPS 2012).

Five convolutions (96-256-384-384-256, as in d2l's section "Deep Convolutional Neural
Networks (AlexNet)" and the paper), overlapping 3x3/2 max
pooling, two 4096-unit dense layers with dropout 0.5, then the output layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import register_model
from .layers import ConvNet, init_weights, scale_width

# (out_channels, kernel, stride, padding, pool after it): the faithful feature plan.
FEATURES = (
    (96, 11, 4, 2, True),
    (256, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, True),
)
DENSE = (4096, 4096)


class AlexNet(ConvNet):
    """AlexNet on one device.

    Faithful form (224 px): conv1 11x11/4 with padding 2 (55x55 output, the size the
    paper reports), max pool 3x3/2 after conv1, conv2 and conv5, an adaptive 6x6
    average pool (as in torchvision; the identity at 224 px, so larger images work),
    then 9216 -> 4096 -> 4096 -> classes with dropout 0.5 after each hidden dense
    layer. Departures from the paper: no split over two GPUs (so no grouped
    convolutions: 62.4M parameters), He initialisation (fan in) with zero biases
    instead of N(0, 0.01) with some biases at 1 (the output layer keeps N(0, 0.01)),
    and local response normalisation
    only with ``lrn=True`` (after the ReLU of conv1 and conv2, size 5, k=2,
    alpha=1e-4, beta=0.75 as in the paper; PyTorch divides alpha by the size, so it
    is given 5e-4).

    Small-input form (28-32 px): the same five convolutions and dense layers, but
    conv1 is 3x3 with stride 1 and padding 1, the three max pools have padding 1
    (28 -> 14 -> 7 -> 4 and 32 -> 16 -> 8 -> 4), and the adaptive pool before the
    dense layers is 4x4, so the first dense layer takes 256*16 inputs.

    Ablations of the paper's tricks: ``dropout=0`` (or False) trains without dropout
    (the paper says the network overfits substantially without it), and ``lrn=True``
    adds the local response normalisation that is off by default (the paper credits it
    with 1.2-1.4 points of top-1 error).

    ``width`` scales every convolution and both hidden dense layers.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        width: float = 1.0,
        lrn: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.small_input = small_input
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c = in_channels
        for i, (out, k, s, p, pool) in enumerate(FEATURES):
            if small_input and i == 0:
                k, s, p = 3, 1, 1
            out = scale_width(out, width)
            layers += [nn.Conv2d(c, out, k, s, p), nn.ReLU(inplace=True)]
            if lrn and i < 2:
                layers.append(nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0))
            if pool:
                pad = 1 if small_input else 0
                layers.append(nn.MaxPool2d(3, 2, pad))
            c = out
        self.features = nn.Sequential(*layers)
        side = 4 if small_input else 6
        self.avgpool = nn.AdaptiveAvgPool2d(side)
        hidden = [scale_width(d, width) for d in DENSE]
        head: list[nn.Module] = [nn.Flatten()]
        n = c * side * side
        for d in hidden:
            head += [nn.Linear(n, d), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            n = d
        head.append(nn.Linear(n, num_classes))
        self.classifier = nn.Sequential(*head)
        init_weights(self, conv_mode="fan_in", outputs=[self.classifier[-1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.features(x)  # (N, 256, 6, 6) at 224 px; (N, 256, 4, 4) small
        x = self.avgpool(x)
        return self.classifier(x)  # (N, num_classes)


@register_model
def alexnet(**options: Any) -> AlexNet:
    """AlexNet, 96-256-384-384-256 (Krizhevsky et al. 2012); options as :class:`AlexNet`."""
    model = AlexNet(**options)
    model.name = "alexnet"
    return model
