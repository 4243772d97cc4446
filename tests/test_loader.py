"""The in-memory Loader, stratified_split and channel_stats."""

from __future__ import annotations

import pytest
import torch

from convzoo.data.augment import AugmentConfig, build_augment
from convzoo.data.loader import Loader, channel_stats, stratified_split
from convzoo.errors import DataError


def make_data(n: int = 103, c: int = 1, size: int = 8, classes: int = 5):
    # image i is filled with i % 251 and its label is i % classes: identifiable by content
    ids = torch.arange(n)
    images = (ids % 251).to(torch.uint8).view(n, 1, 1, 1).expand(n, c, size, size).contiguous()
    return images, ids % classes


def ids_of(x: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    return (x[:, 0, 0, 0] * std + mean).mul(255).round().long()


def loader(images, labels, **kw) -> Loader:
    kw = {"batch_size": 10, "mean": (0.0,), "std": (1.0,), **kw}
    return Loader(images, labels, **kw)


def test_every_image_once_per_epoch():
    images, labels = make_data()
    ld = loader(images, labels, shuffle=True, seed=3)
    assert len(ld) == 11 and ld.num_samples == 103
    for epoch in (0, 1):
        seen = torch.cat([ids_of(x) for x, _ in ld.epoch(epoch)])
        assert sorted(seen.tolist()) == list(range(103))
    first = torch.cat([ids_of(x) for x, _ in ld.epoch(0)])
    second = torch.cat([ids_of(x) for x, _ in ld.epoch(1)])
    assert not torch.equal(first, second)  # each epoch has its own order
    assert torch.equal(first, torch.cat([ids_of(x) for x, _ in ld]))  # iter == epoch 0


def test_labels_follow_images_and_normalisation():
    images, labels = make_data()
    ld = loader(images, labels, shuffle=True, mean=(0.5,), std=(0.25,))
    for x, y in ld.epoch(0):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        ids = ids_of(x, 0.5, 0.25)
        assert torch.equal(ids % 5, y)
    x, _ = next(iter(loader(images, labels, mean=(0.5,), std=(0.25,))))
    expected = (images[:10].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)


def test_no_shuffle_keeps_order():
    images, labels = make_data()
    seen = torch.cat([ids_of(x) for x, _ in loader(images, labels).epoch(5)])
    assert seen.tolist() == list(range(103))


def test_drop_last():
    images, labels = make_data()
    ld = loader(images, labels, shuffle=True, drop_last=True)
    sizes = [len(y) for _, y in ld.epoch(0)]
    assert len(ld) == 10 and sizes == [10] * 10 and ld.num_samples == 100
    kept = [len(y) for _, y in loader(images, labels).epoch(0)]
    assert kept[-1] == 3


@pytest.mark.parametrize("augmented", [False, True])
def test_resume_equals_tail_of_full_epoch(augmented):
    images, labels = make_data(c=3, size=12)
    aug = build_augment(AugmentConfig(crop_padding=2, flip=True, erasing=0.5, mixup=0.4), 5)
    kw = dict(
        shuffle=True, seed=11, augment=aug if augmented else None, mean=(0.0,) * 3, std=(1.0,) * 3
    )
    full = list(loader(images, labels, **kw).epoch(2))
    tail = list(loader(images, labels, **kw).epoch(2, start=4))  # a new Loader, as after a restart
    assert len(tail) == len(full) - 4
    for (xa, ya), (xb, yb) in zip(full[4:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert list(loader(images, labels, **kw).epoch(2, start=len(full))) == []
    with pytest.raises(DataError, match="start batch"):
        loader(images, labels, **kw).epoch(2, start=len(full) + 1)


def test_rank_shards_disjoint_and_covering():
    images, labels = make_data()
    world = 3
    shards = [
        loader(images, labels, shuffle=True, seed=5, rank=r, world_size=world) for r in range(world)
    ]
    per_rank = [[ids_of(x) for x, _ in s.epoch(1)] for s in shards]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    everything = torch.cat([torch.cat(p) for p in per_rank])
    assert sorted(everything.tolist()) == list(range(103))  # disjoint and covering
    assert sum(s.num_samples for s in shards) == 103
    # rank r's share of batch b is a contiguous piece of the single-process batch b
    single = [ids_of(x) for x, _ in loader(images, labels, shuffle=True, seed=5).epoch(1)]
    for b, batch in enumerate(single):
        assert torch.equal(torch.cat([per_rank[r][b] for r in range(world)]), batch)


def test_resize_and_channels_last():
    images, labels = make_data(c=3, size=8)
    ld = loader(images, labels, resize=32, channels_last=True, mean=(0.0,) * 3, std=(1.0,) * 3)
    x, _ = next(iter(ld))
    assert x.shape == (10, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x[:, :, 5, 7], images[:10, :, 0, 0].float() / 255)  # constant images


def test_soft_targets_with_mixup():
    images, labels = make_data()
    aug = build_augment(AugmentConfig(mixup=0.4), 5)
    x, y = next(iter(loader(images, labels, shuffle=True, augment=aug, num_classes=5)))
    assert y.shape == (10, 5) and y.dtype == torch.float32
    torch.testing.assert_close(y.sum(1), torch.ones(10))


def test_thread_setting_restored_between_batches():
    images, labels = make_data()
    before = torch.get_num_threads()
    for _ in loader(images, labels, augment=build_augment(AugmentConfig(crop_padding=1), 5)):
        assert torch.get_num_threads() == before  # the consumer (the model) gets every thread
    assert torch.get_num_threads() == before


def test_bad_arguments():
    images, labels = make_data()
    with pytest.raises(DataError, match="uint8"):
        loader(images.float(), labels)
    with pytest.raises(DataError, match="labels for"):
        loader(images, labels[:-1])
    with pytest.raises(DataError, match="one per channel"):
        loader(images, labels, mean=(0.1, 0.2), std=(1.0, 1.0))
    with pytest.raises(DataError, match="rank"):
        loader(images, labels, rank=2, world_size=2)
    with pytest.raises(DataError, match="outside"):
        loader(images, labels, num_classes=3)


def test_stratified_split_keeps_proportions_and_is_disjoint():
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate([500, 300, 150, 50])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    train, val = stratified_split(labels, 100, seed=1)
    assert len(val) == 100 and len(train) == 900
    assert torch.bincount(labels[val]).tolist() == [50, 30, 15, 5]
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    again, val_again = stratified_split(labels, 100, seed=1)
    assert torch.equal(val, val_again) and torch.equal(train, again)
    assert not torch.equal(stratified_split(labels, 100, seed=2)[1], val)


def test_stratified_split_rounding_and_bounds():
    labels = torch.tensor([0] * 7 + [1] * 7 + [2] * 7)
    _, val = stratified_split(labels, 5, seed=0)
    assert len(val) == 5 and sorted(torch.bincount(labels[val], minlength=3).tolist()) == [1, 2, 2]
    assert len(stratified_split(labels, 0, seed=0)[1]) == 0
    with pytest.raises(DataError, match="validation size"):
        stratified_split(labels, 21, seed=0)


def test_real_fashion_mnist_validation_split(real_fashion_mnist):
    from convzoo.data.datasets import load_dataset

    ds = load_dataset("fashion-mnist", data_dir=real_fashion_mnist)
    train, val = stratified_split(ds.train_labels, 5000, seed=0)
    assert len(train) == 55000 and torch.bincount(ds.train_labels[val]).tolist() == [500] * 10


def test_channel_stats():
    images = torch.zeros(4, 2, 3, 3, dtype=torch.uint8)
    images[:2, 0] = 255  # channel 0: half the pixels white
    images[:, 1] = 51  # channel 1: constant 0.2
    mean, std = channel_stats(images, chunk=3)
    assert mean == pytest.approx((0.5, 0.2)) and std[0] == pytest.approx(0.5)
    assert std[1] == 1.0  # a constant channel: std 1 keeps normalisation finite
    with pytest.raises(DataError):
        channel_stats(torch.zeros(0, 1, 2, 2, dtype=torch.uint8))
