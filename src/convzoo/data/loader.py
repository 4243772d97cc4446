"""An in-memory batch iterator on the training device.

The whole split lives on the device as one uint8 tensor. Each epoch is a permutation from
``randperm`` with a generator seeded by (seed, epoch); each batch is gathered by index,
augmented as a whole batch (seeded by (seed, epoch, batch index)), converted to float and
normalised in one fused step, optionally resized and made channels_last. There is no
per-sample Python anywhere, and resuming at batch k of an epoch gives exactly the batches
a full epoch would have given from k on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

__all__ = ["Loader", "channel_stats", "stratified_split"]

_PERM_STREAM = 0x5045524D  # "PERM": keeps permutation seeds apart from batch seeds
_AUG_STREAM = 0x41554720  # "AUG "


def _seed(*key: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy's SeedSequence)."""
    state = np.random.SeedSequence([k % 2**64 for k in key]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def stratified_split(
    labels: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices 0..N-1 into (train, val) with ``val_size`` validation images.

    Each class gets a share of the validation set proportional to its frequency (largest
    remainders settle the rounding); which images are chosen is fixed by ``seed``. Both
    index tensors are sorted, int64, disjoint, and together cover 0..N-1.
    """
    labels = torch.as_tensor(labels).reshape(-1).cpu().long()
    n = labels.numel()
    if not 0 <= val_size < n:
        raise DataError(
            f"validation size {val_size} must be at least 0 and less than the {n} images"
        )
    if val_size == 0:
        return torch.arange(n), torch.empty(0, dtype=torch.long)
    if int(labels.min()) < 0:
        raise DataError("labels must be non-negative")
    counts = torch.bincount(labels)
    exact = counts.double() * val_size / n
    quota = exact.floor().long()
    short = val_size - int(quota.sum())
    if short:
        order = torch.argsort(-(exact - quota), stable=True)  # largest remainder first
        quota[order[:short]] += 1
    g = torch.Generator().manual_seed(_seed(seed, 0x53504C54))
    perm = torch.randperm(n, generator=g)
    grouped = perm[torch.argsort(labels[perm], stable=True)]  # by class, random within
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(n) - starts[labels[grouped]]
    take = rank_in_class < quota[labels[grouped]]
    val = grouped[take].sort().values
    train = grouped[~take].sort().values
    return train, val


def channel_stats(
    images: torch.Tensor, chunk: int = 8192
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), in [0, 1] units.

    A constant channel (std 0) is given std 1.0.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(
            f"channel_stats needs a non-empty (N, C, H, W) batch, got {tuple(images.shape)}"
        )
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3)).cpu()
        total_sq += part.square().sum(dim=(0, 2, 3)).cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0)
    std = var.sqrt() / 255.0
    mean = mean / 255.0
    # a constant channel gets std 1, so normalising it stays finite
    return tuple(float(m) for m in mean), tuple(float(s) if s > 1e-6 else 1.0 for s in std)


class _one_thread:
    """Run a batch's small, memory-bound CPU ops on one thread, then restore the setting.

    At 28-32 px a batch op takes microseconds, so a parallel region costs more than it
    saves, and on a busy machine waiting for a descheduled helper thread can make each op
    take milliseconds. Big ops (resizing to 224 px, the model) keep all threads.
    """

    def __init__(self, device: torch.device) -> None:
        self.active = device.type == "cpu"

    def __enter__(self) -> None:
        if self.active:
            self.saved = torch.get_num_threads()
            if self.saved != 1:
                torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        if self.active and self.saved != 1:
            torch.set_num_threads(self.saved)


class Loader:
    """Batches of a whole in-memory split, ready for the model.

    ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,) are moved to ``device`` once.
    ``batch_size`` is the global batch; with ``world_size`` > 1 each global batch is split
    into ``world_size`` near-equal contiguous shares and rank ``rank`` gets its own (a last
    partial batch smaller than ``world_size`` is dropped, so every rank takes the same
    number of steps). Augmentation is drawn for the whole global batch, so the shares
    are exactly the rows of the one-process batch. ``augment(x_uint8, y, generator)``
    runs on each batch before normalisation; a float result is taken to be in the same
    0-255 units.
    ``num_classes``, when given, is checked against the labels.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        resize: int | None = None,
        channels_last: bool = False,
        augment: Callable | None = None,
        num_classes: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise DataError(
                f"Loader needs uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{len(labels)} labels for {len(images)} images")
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, not {batch_size}")
        if not (world_size >= 1 and 0 <= rank < world_size):
            raise DataError(f"rank {rank} is not in 0..{world_size - 1}")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise DataError(
                f"mean and std need {c} values (one per channel), got {len(mean)} and {len(std)}"
            )
        if any(not s > 0 for s in std):
            raise DataError(f"std must be positive, got {tuple(std)}")
        if resize is not None and resize < 1:
            raise DataError(f"resize must be a positive size, not {resize}")
        if num_classes is not None and len(labels):
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= num_classes:
                raise DataError(
                    f"label {hi if hi >= num_classes else lo} outside 0..{num_classes - 1}"
                )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.long)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, int(seed)
        self.resize, self.channels_last = resize, channels_last
        self.augment, self.num_classes = augment, num_classes
        self.rank, self.world_size = rank, world_size
        # normalisation fused into one multiply-add: shift + x * scale (uint8 x promoted)
        std_t = torch.tensor(std, dtype=torch.float32)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, c, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).view(1, c, 1, 1).to(self.device)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        n = len(images)
        full, rest = divmod(n, self.batch_size)
        keep_rest = rest > 0 and not drop_last and rest >= world_size
        self._num_batches = full + int(keep_rest)
        per_rank = self._share(self.batch_size)
        self.num_samples = full * per_rank + (self._share(rest) if keep_rest else 0)

    def _share(self, size: int) -> int:
        """How many of a global batch of ``size`` images this rank takes."""
        base, extra = divmod(size, self.world_size)
        return base + int(self.rank < extra)

    def __len__(self) -> int:
        return self._num_batches

    @property
    def num_images(self) -> int:
        return len(self.images)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of the images in ``epoch`` (depends only on seed and epoch)."""
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(_seed(self.seed, _PERM_STREAM, epoch))
        return torch.randperm(n, generator=g)

    def batch_generator(self, epoch: int, index: int) -> torch.Generator:
        """The CPU generator that drives batch ``index`` of ``epoch``'s augmentation."""
        return torch.Generator().manual_seed(_seed(self.seed, _AUG_STREAM, epoch, index))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start``, ``start + 1``, ... of ``epoch``: (x float32 normalised, y)."""
        if not 0 <= start <= len(self):
            raise DataError(f"start batch {start} is outside 0..{len(self)}")
        return self._iterate(epoch, start)

    def _iterate(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = self.permutation(epoch).to(self.device)
        bs, n = self.batch_size, len(self.images)
        for b in range(start, len(self)):
            idx = perm[b * bs : min((b + 1) * bs, n)]  # the global batch
            with _one_thread(self.device):
                x, y = self._prepare(idx, epoch, b, self._share_bounds(len(idx)))
            if self.resize is not None and x.shape[-2:] != (self.resize, self.resize):
                x = F.interpolate(
                    x, size=(self.resize, self.resize), mode="bilinear", align_corners=False
                )
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _share_bounds(self, size: int) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of a global batch of ``size`` images."""
        base, extra = divmod(size, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + int(self.rank < extra)

    def _prepare(
        self, idx: torch.Tensor, epoch: int, b: int, share: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``share`` (default: all) of the global batch ``idx``, augmented and normalised.

        With augmentation the whole global batch is augmented and this rank keeps its
        rows, so that every image gets the same augmentation (and mixup the same
        partner) whatever the number of ranks: a run on W processes sees exactly the
        batches of a one-process run. Without augmentation only this rank's rows are
        gathered.
        """
        lo, hi = (0, len(idx)) if share is None else share
        if self.augment is None:
            idx = idx[lo:hi]
        x = self.images.index_select(0, idx)  # uint8 (B, C, H, W)
        y = self.labels.index_select(0, idx)  # int64 (B,)
        if self.augment is not None:
            x, y = self.augment(x, y, self.batch_generator(epoch, b))
            if (lo, hi) != (0, len(idx)):
                x, y = x[lo:hi], y[lo:hi]  # this rank's share (b, C, H, W)
        return torch.addcmul(self._shift, x, self._scale), y  # float32 (B, C, H, W)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def __repr__(self) -> str:
        return (
            f"Loader({len(self.images)} images, batch_size={self.batch_size}, "
            f"batches={len(self)}, shuffle={self.shuffle}, device={self.device}, "
            f"rank={self.rank}/{self.world_size})"
        )


def batches_per_epoch(num_images: int, batch_size: int, drop_last: bool) -> int:
    """The number of batches a Loader makes of ``num_images`` (world size 1)."""
    return num_images // batch_size if drop_last else math.ceil(num_images / batch_size)
