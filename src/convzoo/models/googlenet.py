"""GoogLeNet (Szegedy et al., "Going Deeper with Convolutions", CVPR 2015).

Nine ``Inception`` blocks, each four parallel paths (1x1; 1x1 then 3x3; 1x1 then 5x5;
3x3 max pool then 1x1) concatenated along the channels, as in the paper's Table 1.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..registry import register_model
from .layers import ConvNet, conv_relu, init_weights, scale_width

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTIONS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
AUX_LOSS_WEIGHT = 0.3  # the paper's weight of each auxiliary loss


class BasicConv(nn.Sequential):
    """Conv, optional batch norm, ReLU (one row in :func:`convzoo.summary`)."""


def _conv(cin: int, cout: int, k: int, batch_norm: bool, **kw: int) -> list[nn.Module]:
    # The BN variant has bias-free convolutions and eps 1e-3 (as torchvision).
    return conv_relu(cin, cout, k, batch_norm=batch_norm, bias=not batch_norm, bn_eps=1e-3, **kw)


class Inception(nn.Module):
    """d2l's ``Inception`` block (section "Networks with Parallel Concatenations"): four paths, concatenated along the channels.

    Path 1: 1x1 conv (``n1_1``). Path 2: 1x1 (``n2_1``) then 3x3 (``n2_3``).
    Path 3: 1x1 (``n3_1``) then 5x5 (``n3_5``). Path 4: 3x3/1 max pool then 1x1
    (``n4_1``). Every convolution has a ReLU; all paths keep the height and width.
    ``paths`` keeps only the paths named (1-4), for ablations; the others are absent.
    """

    def __init__(
        self,
        in_channels: int,
        n1_1: int,
        n2_1: int,
        n2_3: int,
        n3_1: int,
        n3_5: int,
        n4_1: int,
        *,
        batch_norm: bool = False,
        paths: tuple[int, ...] = (1, 2, 3, 4),
    ) -> None:
        super().__init__()
        if not paths or not set(paths) <= {1, 2, 3, 4}:
            raise ModelError(f"Inception paths are some of 1, 2, 3, 4; got {paths!r}")
        bn = batch_norm
        self.p1 = self.p2 = self.p3 = self.p4 = None
        if 1 in paths:
            self.p1 = nn.Sequential(*_conv(in_channels, n1_1, 1, bn))
        if 2 in paths:
            self.p2 = nn.Sequential(
                *_conv(in_channels, n2_1, 1, bn), *_conv(n2_1, n2_3, 3, bn, padding=1)
            )
        if 3 in paths:
            self.p3 = nn.Sequential(
                *_conv(in_channels, n3_1, 1, bn), *_conv(n3_1, n3_5, 5, bn, padding=2)
            )
        if 4 in paths:
            self.p4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_conv(in_channels, n4_1, 1, bn))
        widths = {1: n1_1, 2: n2_3, 3: n3_5, 4: n4_1}
        self.out_channels = sum(widths[p] for p in set(paths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, n1_1 + n2_3 + n3_5 + n4_1, H, W) with every path
        paths = (self.p1, self.p2, self.p3, self.p4)
        return torch.cat([p(x) for p in paths if p is not None], dim=1)


class AuxClassifier(nn.Module):
    """An auxiliary classifier (paper, section 5): 5x5/3 average pool, 1x1 conv with
    128 filters, dense 1024 with ReLU, dropout 0.7, dense to the classes.

    Departure: the pool is an adaptive 4x4 average pool (as in torchvision): the same
    4x4 output at 224 px (the bins differ slightly), and any input size works.
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, width: float = 1.0, batch_norm: bool = False
    ) -> None:
        super().__init__()
        c, d = scale_width(128, width), scale_width(1024, width)
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            *_conv(in_channels, c, 1, batch_norm),
            nn.Flatten(),
            nn.Linear(c * 16, d),
            nn.ReLU(inplace=True),
            nn.Dropout(0.7),
            nn.Linear(d, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, C, H, W) -> (N, num_classes)


class GoogLeNet(ConvNet):
    """GoogLeNet (Inception v1), Table 1 of the paper.

    Faithful form (224 px): 7x7/2 conv (64), 3x3/2 max pool, 1x1 conv (64), 3x3 conv
    (192), 3x3/2 max pool, Inception 3a-3b, max pool, 4a-4e, max pool, 5a-5b, global
    average pool (the paper's 7x7 pool at 224 px; adaptive, so larger images work),
    dropout 0.4, dense to the classes. Max pools round up, as in the paper's Caffe
    model (112 -> 56 -> 28 -> 14 -> 7). 6,998,552 parameters at 1000 classes.

    Options:
        aux_logits: add the two auxiliary classifiers on 4a and 4d. In training mode
            the forward then returns ``(logits, aux1, aux2)``; the paper's training
            loss is ``loss(logits) + 0.3 * (loss(aux1) + loss(aux2))``
            (:data:`AUX_LOSS_WEIGHT`). In evaluation mode it returns the logits only.
        batch_norm: the common BN variant: every convolution is bias-free and
            followed by batch norm (eps 1e-3). The paper's 5x5 convolutions are kept
            (torchvision's model has 3x3 there).
        lrn: local response normalisation after the first max pool and after the
            3x3 conv, as in the paper's Figure 3 (off by default, as in most
            re-implementations).
        branches: the Inception paths every block keeps (1: 1x1, 2: 3x3, 3: 5x5,
            4: pool), for ablations: ``branches=(1, 2, 4)`` drops the 5x5 path.

    He initialisation (the paper does not give its initialisation).

    Small-input form (28-32 px): the same Inception blocks and stages; the first
    convolution is 3x3 with stride 1, the max pool after the stem convolutions is
    dropped, and the remaining max pools have padding instead of rounding up
    (28 -> 14 -> 7 -> 4; 32 -> 16 -> 8 -> 4).

    ``width`` scales every channel count and the auxiliary dense layers.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        width: float = 1.0,
        aux_logits: bool = False,
        batch_norm: bool = False,
        lrn: bool = False,
        dropout: float = 0.4,
        branches: tuple[int, ...] = (1, 2, 3, 4),
    ) -> None:
        super().__init__()
        self.small_input = small_input
        self.in_channels = in_channels
        self.aux_logits = aux_logits
        bn = batch_norm

        def w(c: int) -> int:
            return scale_width(c, width)

        def pool() -> nn.MaxPool2d:
            if small_input:
                return nn.MaxPool2d(3, 2, 1)
            return nn.MaxPool2d(3, 2, ceil_mode=True)

        def inception(key: str, cin: int) -> Inception:
            return Inception(
                cin, *(w(n) for n in INCEPTIONS[key]), batch_norm=bn, paths=tuple(branches)
            )

        stem: OrderedDict[str, nn.Module] = OrderedDict()
        k1, s1, p1 = (3, 1, 1) if small_input else (7, 2, 3)
        stem["conv1"] = BasicConv(*_conv(in_channels, w(64), k1, bn, stride=s1, padding=p1))
        stem["pool1"] = pool()
        if lrn:
            stem["lrn1"] = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
        stem["conv2"] = BasicConv(*_conv(w(64), w(64), 1, bn))
        stem["conv3"] = BasicConv(*_conv(w(64), w(192), 3, bn, padding=1))
        if lrn:
            stem["lrn2"] = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
        if not small_input:
            stem["pool2"] = pool()
        self.stem = nn.Sequential(stem)
        self.inception3a = inception("3a", w(192))
        self.inception3b = inception("3b", self.inception3a.out_channels)
        self.pool3 = pool()
        self.inception4a = inception("4a", self.inception3b.out_channels)
        self.inception4b = inception("4b", self.inception4a.out_channels)
        self.inception4c = inception("4c", self.inception4b.out_channels)
        self.inception4d = inception("4d", self.inception4c.out_channels)
        self.inception4e = inception("4e", self.inception4d.out_channels)
        self.pool4 = pool()
        self.inception5a = inception("5a", self.inception4e.out_channels)
        self.inception5b = inception("5b", self.inception5a.out_channels)
        c = self.inception5b.out_channels
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes)
        )
        self.aux1: AuxClassifier | None = None
        self.aux2: AuxClassifier | None = None
        if aux_logits:
            c4a, c4d = self.inception4a.out_channels, self.inception4d.out_channels
            self.aux1 = AuxClassifier(c4a, num_classes, width=width, batch_norm=bn)
            self.aux2 = AuxClassifier(c4d, num_classes, width=width, batch_norm=bn)
        outputs = [self.head[-1]] + [
            aux.net[-1] for aux in (self.aux1, self.aux2) if aux is not None
        ]
        init_weights(self, conv_mode="fan_in", outputs=outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self.check_input(x)
        want_aux = self.aux_logits and self.training
        x = self.stem(x)  # (N, 192, 28, 28) at 224 px
        x = self.inception3a(x)  # (N, 256, 28, 28)
        x = self.inception3b(x)  # (N, 480, 28, 28)
        x = self.pool3(x)  # (N, 480, 14, 14)
        x = self.inception4a(x)  # (N, 512, 14, 14)
        aux1 = self.aux1(x) if want_aux else None  # (N, num_classes)
        x = self.inception4b(x)  # (N, 512, 14, 14)
        x = self.inception4c(x)  # (N, 512, 14, 14)
        x = self.inception4d(x)  # (N, 528, 14, 14)
        aux2 = self.aux2(x) if want_aux else None  # (N, num_classes)
        x = self.inception4e(x)  # (N, 832, 14, 14)
        x = self.pool4(x)  # (N, 832, 7, 7)
        x = self.inception5a(x)  # (N, 832, 7, 7)
        x = self.inception5b(x)  # (N, 1024, 7, 7)
        logits = self.head(x)  # (N, num_classes)
        if want_aux:
            return logits, aux1, aux2
        return logits


@register_model
def googlenet(**options: Any) -> GoogLeNet:
    """GoogLeNet (Szegedy et al. 2015); options as :class:`GoogLeNet`."""
    model = GoogLeNet(**options)
    model.name = "googlenet"
    return model
