"""DenseNet (Huang, Liu, van der Maaten and Weinberger, "Densely Connected
Convolutional Networks", CVPR 2017).

Dense blocks, in which every layer's output is concatenated to its input, alternate
with transition blocks that shrink the channels and halve the height and width. The
registered models are DenseNet-BC (1x1 bottleneck layers, compression 0.5) from the
paper's Table 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..device import available_memory
from ..errors import ModelError
from ..registry import register_model
from ..units import gib
from .layers import ConvNet, init_weights, scale_width

# name -> (growth rate, layers per dense block, channels of the stem): Table 1.
ARCHS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}


class ConvBlock(nn.Sequential):
    """BN, ReLU, conv: a Sequential made by :func:`conv_block`."""


class Transition(nn.Sequential):
    """A transition block: a Sequential made by :func:`transition_block`."""


def conv_block(in_channels: int, channels: int, kernel_size: int = 3) -> ConvBlock:
    """d2l's ``conv_block`` (section "Densely Connected Networks"): batch norm, ReLU, then a bias-free convolution
    (``kernel_size``, padding that keeps the height and width): the pre-activation
    order DenseNet uses."""
    return ConvBlock(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2, bias=False),
    )


class DenseBlock(nn.Module):
    """d2l's ``DenseBlock``: ``num_layers`` layers, each adding ``growth_rate``
    channels that are concatenated to its input.

    With ``bottleneck`` (DenseNet-B, the paper's default for ImageNet) a layer is
    ``conv_block`` 1x1 to ``bn_size * growth_rate`` channels then ``conv_block`` 3x3
    to ``growth_rate``; without it, a single 3x3 ``conv_block`` as in d2l.
    Output channels: ``in_channels + num_layers * growth_rate``.

    ``connect="chain"`` is the ablation of the dense connections: each layer sees only
    the previous layer's output and itself produces as many channels as the
    concatenation would hold there (its last convolution outputs
    ``C + growth_rate`` channels, not ``growth_rate``), so the block's widths, and the
    transitions and head after it, are those of the dense form.
    """

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        *,
        bottleneck: bool = True,
        bn_size: int = 4,
        connect: str = "dense",
    ) -> None:
        super().__init__()
        if connect not in ("dense", "chain"):
            raise ModelError(f'connect is "dense" or "chain", got {connect!r}')
        self.connect = connect
        layers = []
        c = in_channels
        for _ in range(num_layers):
            out = growth_rate if connect == "dense" else c + growth_rate
            if bottleneck:
                inner = bn_size * growth_rate
                layers.append(nn.Sequential(conv_block(c, inner, 1), conv_block(inner, out, 3)))
            else:
                layers.append(conv_block(c, out, 3))
            c += growth_rate
        self.net = nn.ModuleList(layers)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            if self.connect == "chain":
                x = layer(x)  # (N, C + growth_rate, H, W), from the last output only
            else:
                x = torch.cat([x, layer(x)], dim=1)  # (N, C + growth_rate, H, W)
        return x


def transition_block(in_channels: int, channels: int) -> Transition:
    """d2l's ``transition_block``: batch norm, ReLU, 1x1 conv to ``channels``,
    2x2 average pool with stride 2 (halves the height and width)."""
    return Transition(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, channels, 1, bias=False),
        nn.AvgPool2d(2, 2),
    )


class DenseNet(ConvNet):
    """A DenseNet with ``block_config[i]`` layers in dense block ``i``.

    Faithful form (224 px): 7x7/2 conv (``init_channels``), BN, ReLU, 3x3/2 max pool,
    dense blocks separated by transition blocks that keep ``compression`` of the
    channels, then BN, ReLU, global average pool, dense to the classes (the paper's
    7x7 pool at 224 px). Defaults are DenseNet-BC (``bottleneck=True``,
    ``compression=0.5``). d2l's simpler network (3x3 conv blocks, transitions
    halving the channels) is ``bottleneck=False, compression=0.5``; the paper's plain
    DenseNet is ``bottleneck=False, compression=1.0``. He initialisation.

    Small-input form (28-32 px): the stem is a 3x3 conv with stride 1 and no max pool,
    as the paper did for CIFAR; the four dense blocks are kept (28 -> 28 -> 14 -> 7 -> 3).
    ``stem_stride=2`` halves the stem's output (28 -> 14 -> 7 -> 3 -> 1): a quarter of
    the multiply-adds, for fast training on a CPU (a departure from the paper).

    ``connect="chain"`` chains the layers of every dense block instead of
    concatenating their outputs (see :class:`DenseBlock`): the ablation of the paper's
    one idea, at the same widths.

    ``width`` scales the growth rate and the stem's channels.
    """

    def __init__(
        self,
        *,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        init_channels: int = 64,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        width: float = 1.0,
        bottleneck: bool = True,
        bn_size: int = 4,
        compression: float = 0.5,
        stem_stride: int = 1,
        connect: str = "dense",
    ) -> None:
        super().__init__()
        if stem_stride not in (1, 2) or (stem_stride != 1 and not small_input):
            raise ModelError(f"stem_stride is 1 or 2, small-input form only; got {stem_stride!r}")
        if not 0 < compression <= 1:
            raise ModelError(f"compression must be in (0, 1], got {compression!r}")
        if not block_config or min(block_config) < 1:
            raise ModelError(f"block_config needs positive layer counts, got {block_config!r}")
        self.small_input = small_input
        self.in_channels = in_channels
        growth = scale_width(growth_rate, width)
        c = scale_width(init_channels, width)
        # Layer k of a block has a convolution from at least k * growth channels and a
        # 3x3 one to growth channels: a lower bound on the parameters, checked before
        # thousands of layers are built.
        least = 4 * growth * growth * sum(n * (n - 1) // 2 + 9 * n for n in block_config)
        if least > available_memory():
            raise ModelError(
                f"block_config {tuple(block_config)} with growth {growth} needs more than "
                f"{gib(least)} of parameters, more than the memory available; use fewer "
                "layers or a smaller width"
            )
        if small_input:
            stem: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, stem_stride, 1, bias=False)]
        else:
            stem = [
                nn.Conv2d(in_channels, c, 7, 2, 3, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            ]
        self.stem = nn.Sequential(*stem)
        blocks: list[nn.Module] = []
        for i, n in enumerate(block_config):
            block = DenseBlock(
                n, c, growth, bottleneck=bottleneck, bn_size=bn_size, connect=connect
            )
            blocks.append(block)
            c = block.out_channels
            if i != len(block_config) - 1:
                out = max(1, int(c * compression))
                blocks.append(transition_block(c, out))
                c = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c, num_classes),
        )
        init_weights(self, conv_mode="fan_in", outputs=[self.head[-1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)  # (N, 64, 56, 56) at 224 px
        x = self.blocks(x)  # (N, 1024, 7, 7) for densenet121 at 224 px
        return self.head(x)  # (N, num_classes)


def _densenet(name: str, **options: Any) -> DenseNet:
    growth, config, init = ARCHS[name]
    spec: dict[str, Any] = dict(growth_rate=growth, block_config=config, init_channels=init)
    model = DenseNet(**{**spec, **options})
    model.name = name
    return model


@register_model
def densenet121(**options: Any) -> DenseNet:
    """DenseNet-BC-121: growth 32, (6, 12, 24, 16); options as :class:`DenseNet`."""
    return _densenet("densenet121", **options)


@register_model
def densenet161(**options: Any) -> DenseNet:
    """DenseNet-BC-161: growth 48, (6, 12, 36, 24), 96-channel stem; options as :class:`DenseNet`."""
    return _densenet("densenet161", **options)


@register_model
def densenet169(**options: Any) -> DenseNet:
    """DenseNet-BC-169: growth 32, (6, 12, 32, 32); options as :class:`DenseNet`."""
    return _densenet("densenet169", **options)


@register_model
def densenet201(**options: Any) -> DenseNet:
    """DenseNet-BC-201: growth 32, (6, 12, 48, 32); options as :class:`DenseNet`."""
    return _densenet("densenet201", **options)
