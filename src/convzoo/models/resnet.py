"""ResNet (He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016).

Four stages of residual blocks after a stem; ResNet-18/34 use the basic
``Residual`` block (two 3x3 convolutions), ResNet-50/101/152 the ``Bottleneck``
(1x1, 3x3, 1x1 with four times the channels out), as in the paper's Table 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..registry import register_model
from .layers import ConvNet, init_weights, scale_width


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The shortcut: identity, or a 1x1 projection with batch norm when the shape
    changes (the paper's option B)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class Residual(nn.Module):
    """d2l's ``Residual`` (section "Residual Networks"; the basic block): 3x3 conv, BN, ReLU, 3x3 conv, BN, plus
    the shortcut, then ReLU.

    The first convolution has stride ``stride``; when the stride is not 1 or the
    channels change, the shortcut is a 1x1 convolution with that stride and batch
    norm (d2l's ``Residual`` with its 1x1 convolution). Convolutions are bias-free, as each is
    followed by batch norm. ``shortcut=False`` drops the shortcut: the paper's "plain"
    block.
    """

    expansion = 1

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, *, shortcut: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = _projection(in_channels, channels, stride) if shortcut else None
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C_in, H, W) -> (N, channels, H / stride, W / stride)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is None:
            return self.relu(out)
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """The bottleneck block for ResNet-50/101/152: 1x1 conv (``channels``), 3x3 conv
    (``channels``, stride ``stride``), 1x1 conv (``4 * channels``), each with batch
    norm, plus the shortcut, then ReLU.

    The stride sits on the 3x3 convolution, not on the first 1x1 as in the paper
    (the "v1.5" form that torchvision and most later work use). The shortcut is a
    1x1 projection with batch norm when the shape changes; ``shortcut=False`` drops it.
    """

    expansion = 4

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, *, shortcut: bool = True
    ) -> None:
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = _projection(in_channels, out, stride) if shortcut else None
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C_in, H, W) -> (N, 4 * channels, H / stride, W / stride)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is None:
            return self.relu(out)
        return self.relu(out + self.shortcut(x))


# name -> (block, blocks per stage): the paper's Table 1.
ARCHS: dict[str, tuple[type[Residual] | type[Bottleneck], tuple[int, ...]]] = {
    "resnet18": (Residual, (2, 2, 2, 2)),
    "resnet34": (Residual, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}
STAGE_CHANNELS = (64, 128, 256, 512)


class ResNet(ConvNet):
    """A ResNet built from ``block`` with ``layers[i]`` blocks in stage ``i``.

    Faithful form (224 px): 7x7/2 conv (64), BN, ReLU, 3x3/2 max pool, four stages
    (64, 128, 256, 512 channels; the first block of stages 2-4 has stride 2), global
    average pool, dense to the classes. He initialisation (fan out) as in the paper,
    N(0, 0.01) for the output layer; ``zero_init_residual`` starts each block's last
    batch norm at zero (Goyal et al. 2017), so every block begins as the identity.

    Small-input form (28-32 px): the stem is a 3x3 conv with stride 1 and no max pool,
    as the paper did for CIFAR-10; the four stages are kept (28 -> 28 -> 14 -> 7 -> 4).
    ``stem_stride=2`` halves the stem's output (28 -> 14 -> 14 -> 7 -> 4 -> 2): a quarter
    of the multiply-adds, for fast training on a CPU (a departure from the paper).

    ``shortcut=False`` removes every shortcut: the paper's plain-18/34 baselines
    (section 4.1), which it shows train worse than the same depth with shortcuts.

    ``width`` scales every channel count.
    """

    def __init__(
        self,
        block: type[Residual] | type[Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        width: float = 1.0,
        zero_init_residual: bool = False,
        stem_stride: int = 1,
        shortcut: bool = True,
    ) -> None:
        super().__init__()
        if stem_stride not in (1, 2) or (stem_stride != 1 and not small_input):
            raise ModelError(f"stem_stride is 1 or 2, small-input form only; got {stem_stride!r}")
        if zero_init_residual and not shortcut:
            raise ModelError("zero_init_residual needs the shortcuts; leave out shortcut=False")
        if len(layers) != len(STAGE_CHANNELS) or min(layers) < 1:
            raise ModelError(f"layers needs four positive block counts, got {tuple(layers)!r}")
        self.small_input = small_input
        self.in_channels = in_channels
        c = scale_width(64, width)
        if small_input:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c, 3, stem_stride, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c, 7, 2, 3, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        stages = []
        for i, (n, channels) in enumerate(zip(layers, STAGE_CHANNELS, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                b = block(
                    c, scale_width(channels, width), stride if j == 0 else 1, shortcut=shortcut
                )
                blocks.append(b)
                c = b.out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
        init_weights(self, conv_mode="fan_out", outputs=[self.head[-1]])
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, Residual):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)  # (N, 64, 56, 56) at 224 px; (N, 64, H, W) small
        x = self.layer1(x)  # (N, 64 * e, 56, 56), e = block expansion
        x = self.layer2(x)  # (N, 128 * e, 28, 28)
        x = self.layer3(x)  # (N, 256 * e, 14, 14)
        x = self.layer4(x)  # (N, 512 * e, 7, 7)
        return self.head(x)  # (N, num_classes)


def _resnet(name: str, **options: Any) -> ResNet:
    block, layers = ARCHS[name]
    model = ResNet(block, layers, **options)
    model.name = name
    return model


@register_model
def resnet18(**options: Any) -> ResNet:
    """ResNet-18: basic blocks, (2, 2, 2, 2); options as :class:`ResNet`."""
    return _resnet("resnet18", **options)


@register_model
def resnet34(**options: Any) -> ResNet:
    """ResNet-34: basic blocks, (3, 4, 6, 3); options as :class:`ResNet`."""
    return _resnet("resnet34", **options)


@register_model
def resnet50(**options: Any) -> ResNet:
    """ResNet-50: bottleneck blocks, (3, 4, 6, 3); options as :class:`ResNet`."""
    return _resnet("resnet50", **options)


@register_model
def resnet101(**options: Any) -> ResNet:
    """ResNet-101: bottleneck blocks, (3, 4, 23, 3); options as :class:`ResNet`."""
    return _resnet("resnet101", **options)


@register_model
def resnet152(**options: Any) -> ResNet:
    """ResNet-152: bottleneck blocks, (3, 8, 36, 3); options as :class:`ResNet`."""
    return _resnet("resnet152", **options)
