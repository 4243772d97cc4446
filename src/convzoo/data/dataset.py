"""The in-memory dataset that every reader in :mod:`convzoo.data` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Dataset:
    """A whole dataset in memory.

    ``skipped`` maps a reason to how many files (or folders) of an image folder were
    left out for it; ``nested`` counts the images read from folders below a class
    folder. :attr:`notes` says both in one line, for a run's start-up line.
    """

    name: str
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor  # uint8 (M, C, H, W)
    test_labels: torch.Tensor  # int64 (M,)
    classes: list[str]
    source: Path
    skipped: dict[str, int] = field(default_factory=dict)
    nested: int = 0

    @property
    def notes(self) -> str:
        """'' when nothing was left out or nested, else one line, e.g. "skipped 3 files
        not .png .jpg .jpeg .bmp, 1 hidden files or folders; 12 images from nested
        folders"."""
        parts = [f"{n} {reason}" for reason, n in sorted(self.skipped.items()) if n]
        line = f"skipped {', '.join(parts)}" if parts else ""
        if self.nested:
            nested = f"{self.nested} image{'s' if self.nested != 1 else ''} from nested folders"
            line = f"{line}; {nested}" if line else nested
        return line

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    def __repr__(self) -> str:
        c, (h, w) = self.in_channels, self.image_size
        return (
            f"Dataset({self.name!r}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, {c}x{h}x{w}, classes={self.num_classes}, "
            f"source={str(self.source)!r})"
        )
