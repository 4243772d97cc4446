"""Batched augmentation: correctness of each op, soft labels, and seeding."""

from __future__ import annotations

import pytest
import torch

from convzoo.data.augment import (
    Augment,
    AugmentConfig,
    build_augment,
    cutmix,
    hflip,
    mixup,
    one_hot,
    random_crop,
    random_erasing,
)
from convzoo.errors import ConfigError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 16, c: int = 3, h: int = 10, w: int = 12) -> torch.Tensor:
    return torch.randint(1, 256, (n, c, h, w), generator=gen(99), dtype=torch.uint8)


def reference_crop(x: torch.Tensor, p: int, dy: int, dx: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    return padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]


def test_random_crop_matches_per_sample_reference():
    x = batch()
    out = random_crop(x, 2, gen(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    g = gen(1)  # the same draws random_crop made
    dy = torch.randint(0, 5, (16,), generator=g)
    dx = torch.randint(0, 5, (16,), generator=g)
    for i in range(16):
        assert torch.equal(out[i], reference_crop(x[i], 2, int(dy[i]), int(dx[i])))
    assert (out == 0).any()  # zero fill came in somewhere
    assert torch.equal(random_crop(x, 0, gen(1)), x)


def test_hflip():
    x = batch()
    out = hflip(x, gen(2))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(x)


def test_random_erasing():
    x = batch(n=64)
    out = random_erasing(x, 0.5, gen(3))
    changed = (out != x).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 54
    for i in torch.nonzero(changed).flatten().tolist():
        diff = (out[i] != x[i]).any(0)  # (H, W): the erased rectangle (where values differ)
        rows, cols = torch.nonzero(diff, as_tuple=True)
        box = out[i][:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box == box.flatten()[0]).all()  # one grey level fills the rectangle
    assert torch.equal(random_erasing(x, 0.0, gen(3)), x)
    assert torch.equal(
        random_erasing(x, 1.0, gen(3)).ne(x).flatten(1).any(1), torch.ones(64, dtype=torch.bool)
    )


@pytest.mark.parametrize("op", [mixup, cutmix])
def test_mix_soft_labels_sum_to_one(op):
    x = batch()
    y = one_hot(torch.arange(16) % 4, 4)
    out, soft = op(x, y, 1.0, gen(4))
    assert out.shape == x.shape and soft.shape == (16, 4)
    torch.testing.assert_close(soft.sum(1), torch.ones(16))
    assert (soft >= 0).all() and ((soft > 0) & (soft < 1)).any()


def test_mixup_blends_pixels_like_labels():
    x = batch()
    y = one_hot(torch.arange(16), 16)  # one class per image: the label says who is mixed in
    out, soft = mixup(x, y, 0.4, gen(5))
    assert out.dtype == torch.float32
    own = torch.arange(16)
    lam = soft[own, own]
    others = soft.clone()
    others[own, own] = -1
    partner = others.argmax(1)
    expected = lam.view(-1, 1, 1, 1) * x.float() + (1 - lam).view(-1, 1, 1, 1) * x[partner].float()
    mixed = lam < 1 - 1e-6
    assert mixed.any()
    torch.testing.assert_close(out[mixed], expected[mixed])


def test_cutmix_label_weight_is_box_area():
    x = torch.zeros(8, 1, 20, 20, dtype=torch.uint8)
    x[4:] = 255
    y = one_hot(torch.tensor([0] * 4 + [1] * 4), 2)
    out, soft = cutmix(x, y, 1.0, gen(6))
    assert out.dtype == torch.uint8
    # the share of the pixels that came from a white image equals the label weight of class 1
    white = out.float().mean(dim=(1, 2, 3)) / 255
    torch.testing.assert_close(white, soft[:, 1])


def test_same_seed_same_result_different_seed_differs():
    cfg = AugmentConfig(crop_padding=2, flip=True, erasing=0.5, mixup=0.2, cutmix=1.0)
    aug = build_augment(cfg, 10)
    x, y = batch(), torch.arange(16) % 10
    a = aug(x, y, gen(7))
    b = aug(x, y, gen(7))
    c = aug(x, y, gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0].float(), c[0].float())
    assert torch.equal(x, batch())  # the input batch is untouched


def test_build_augment_switches():
    assert build_augment(AugmentConfig(), 10) is None
    assert build_augment(None, 10) is None
    aug = build_augment(AugmentConfig(flip=True), 10)
    assert isinstance(aug, Augment) and "flip=True" in repr(aug)
    x, y = batch(), torch.arange(16) % 10
    out, labels = aug(x, y, gen(0))
    assert out.dtype == torch.uint8 and torch.equal(labels, y)  # no soft targets without mixing
    _, soft = build_augment(AugmentConfig(cutmix=1.0), 10)(x, y, gen(0))
    assert soft.shape == (16, 10)


@pytest.mark.parametrize(
    "kw",
    [
        {"crop_padding": -1},
        {"crop_padding": 1.5},
        {"erasing": 1.5},
        {"mixup": -0.1},
        {"cutmix": float("nan")},
    ],
)
def test_bad_config(kw):
    with pytest.raises(ConfigError):
        AugmentConfig(**kw)
