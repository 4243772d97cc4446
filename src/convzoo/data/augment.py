"""Batched data augmentation on tensors: no Python loop over the samples of a batch.

Each function is pure: it takes a batch (N, C, H, W) and a CPU ``torch.Generator`` and
returns a new batch, drawing every random number from that generator (on the CPU, so the
result does not depend on the device the batch lives on). Images stay uint8 where the
operation allows; mixup returns float32 images in the same 0-255 units.

* :func:`random_crop`: zero padding then a random crop back to H x W, as in the
  CIFAR experiments of He et al. 2016 (4 px) - done as a per-sample translation by
  index arithmetic and one ``gather`` (which also does the flip when both are on).
* :func:`hflip`: random horizontal flip with probability 1/2.
* :func:`random_erasing`: Zhong et al. 2017; departs from the paper by filling the
  erased rectangle with one random grey level per image instead of per-pixel noise.
* :func:`mixup`: Zhang et al. 2018, one lambda ~ Beta(alpha, alpha) per batch.
* :func:`cutmix`: Yun et al. 2019, one box per batch, lambda corrected to the box area.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = [
    "Augment",
    "AugmentConfig",
    "build_augment",
    "cutmix",
    "hflip",
    "mixup",
    "one_hot",
    "random_crop",
    "random_erasing",
]


@dataclass
class AugmentConfig:
    """Which augmentations to apply (all off by default)."""

    crop_padding: int = 0  # random crop after zero padding (0: off)
    flip: bool = False  # random horizontal flip
    erasing: float = 0.0  # random erasing probability
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # cutmix alpha (0: off)

    def __post_init__(self) -> None:
        if int(self.crop_padding) != self.crop_padding or self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be a whole number >= 0, not {self.crop_padding}")
        if not 0.0 <= self.erasing <= 1.0:
            raise ConfigError(f"erasing is a probability in [0, 1], not {self.erasing}")
        for name in ("mixup", "cutmix"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ConfigError(f"{name} alpha must be >= 0, not {value}")

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.flip or self.erasing or self.mixup or self.cutmix)


def _uniform(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g).to(device)


def _beta(alpha: float, g: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha), seeded from ``g`` (torch has no seeded Beta)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def random_crop(
    x: torch.Tensor, padding: int, g: torch.Generator, flip: bool = False
) -> torch.Tensor:
    """Pad each image with ``padding`` zeros on every side, then crop H x W at a random place.

    With ``flip``, each image is also flipped left-right with probability 1/2, in the same
    single gather (a flip is a mirrored column index).
    """
    if padding <= 0 and not flip:
        return x
    n, c, h, w = x.shape
    p = max(padding, 0)
    xp = F.pad(x, (p, p, p, p)) if p else x  # (N, C, H+2p, W+2p), zero fill
    wp = w + 2 * p
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g).to(x.device)
    j = torch.arange(w, device=x.device)
    cols = dx[:, None] + j  # (N, W)
    if flip:
        mirrored = (_uniform(n, g, x.device) < 0.5)[:, None]
        cols = torch.where(mirrored, dx[:, None] + (w - 1 - j), cols)
    rows = (dy[:, None] + torch.arange(h, device=x.device)) * wp  # (N, H) row offsets
    index = (rows[:, :, None] + cols[:, None, :]).view(n, 1, h * w)  # (N, 1, H*W)
    return xp.flatten(2).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image left-right with probability ``p``."""
    flip = (_uniform(x.shape[0], g, x.device) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def random_erasing(
    x: torch.Tensor,
    p: float,
    g: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """With probability ``p`` per image, fill a random rectangle (area share in ``scale``,
    aspect ratio in ``ratio``) with a random grey level (Zhong et al. 2017)."""
    if p <= 0:
        return x
    n, _, h, w = x.shape
    apply = torch.rand(n, generator=g) < p
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=g) * (h * w)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = torch.exp(log_r)
    eh = torch.sqrt(area * r).round().clamp(1, h).long()
    ew = torch.sqrt(area / r).round().clamp(1, w).long()
    y0 = (torch.rand(n, generator=g) * (h - eh + 1)).long()
    x0 = (torch.rand(n, generator=g) * (w - ew + 1)).long()
    fill = torch.randint(0, 256, (n,), generator=g)
    dev = x.device
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    y0, x0, eh, ew = y0.to(dev), x0.to(dev), eh.to(dev), ew.to(dev)
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + eh)[:, None])  # (N, H)
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + ew)[:, None])  # (N, W)
    mask = inside_y[:, :, None] & inside_x[:, None, :] & apply.to(dev)[:, None, None]
    value = fill.to(device=dev, dtype=x.dtype).view(n, 1, 1, 1)
    return torch.where(mask[:, None], value, x)


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels (N,) -> float32 one-hot targets (N, num_classes); soft targets pass."""
    if y.is_floating_point():
        return y
    return F.one_hot(y, num_classes).float()


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend the batch with a shuffled copy of itself; ``y`` are soft targets (N, K).

    Returns float32 images in the input's units and the blended targets (rows sum to 1).
    """
    lam = _beta(alpha, g)
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    xf = x.float()
    x_out = xf.mul(lam).add_(xf[perm], alpha=1.0 - lam)
    y_out = y.mul(lam).add_(y[perm], alpha=1.0 - lam)
    return x_out, y_out


def cutmix(
    x: torch.Tensor, y: torch.Tensor, alpha: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste one random box from a shuffled copy of the batch; ``y`` are soft targets (N, K).

    The box's area share is 1 - lambda, lambda ~ Beta(alpha, alpha); lambda is then
    corrected to the clipped box's real area. Images keep their dtype.
    """
    n, _, h, w = x.shape
    lam = _beta(alpha, g)
    perm = torch.randperm(n, generator=g).to(x.device)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=g))
    cx = int(torch.randint(0, w, (1,), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    y_out = y.mul(lam).add_(y[perm], alpha=1.0 - lam)
    return out, y_out


class Augment:
    """The augmentation a Loader applies to each batch: crop, flip, erasing, then mixup or
    cutmix (when both are on, one of the two is chosen per batch with probability 1/2).

    ``fn(x_uint8, y, generator) -> (x, y)``; y becomes float soft targets (N, K) when mixup
    or cutmix is on, else stays the integer labels.
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes

    def __repr__(self) -> str:
        on = {k: v for k, v in asdict(self.cfg).items() if v}
        return f"Augment({', '.join(f'{k}={v}' for k, v in on.items())})"

    @property
    def soft_targets(self) -> bool:
        return bool(self.cfg.mixup or self.cfg.cutmix)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if cfg.crop_padding:
            x = random_crop(x, cfg.crop_padding, g, flip=cfg.flip)  # one gather for both
        elif cfg.flip:
            x = hflip(x, g)
        if cfg.erasing:
            x = random_erasing(x, cfg.erasing, g)
        if self.soft_targets:
            y = one_hot(y, self.num_classes)
            use_cutmix = bool(cfg.cutmix) and (
                not cfg.mixup or bool(torch.rand(1, generator=g) < 0.5)
            )
            x, y = cutmix(x, y, cfg.cutmix, g) if use_cutmix else mixup(x, y, cfg.mixup, g)
        return x, y


def build_augment(cfg: AugmentConfig | None, num_classes: int) -> Augment | None:
    """The batch augmentation for ``cfg``, or None when everything is off."""
    if cfg is None or not cfg.enabled:
        return None
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, not {num_classes}")
    return Augment(cfg, num_classes)
