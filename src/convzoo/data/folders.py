"""Image folders, one sub-folder per class, read whole into uint8 tensors (see
:mod:`convzoo.data.datasets` for the layout), and single images for ``predict``.

Only an image's header is read before its size is checked (:data:`MAX_IMAGE_PIXELS`),
and a folder that would need more than :data:`MAX_FOLDER_BYTES` is refused before
anything is allocated.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
FOLDER_TEST_FRACTION = 0.2
FOLDER_SPLIT_SEED = 0
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
# An image whose header declares more pixels than this (8192 x 8192) is refused before
# it is decoded: lower than Pillow's decompression-bomb limit, so Pillow never merely
# warns about an image convzoo reads.
MAX_IMAGE_PIXELS = 64 * 2**20
# The most memory an image-folder dataset may take (N x C x H x W bytes of uint8).
MAX_FOLDER_BYTES = 16 * 2**30


# The centre crop of torchvision's ImageNet evaluation: the shorter side is resized to
# 256 for a 224 crop.
CROP_FRACTION = 224 / 256


def load_image(
    path: str | os.PathLike, in_channels: int, size: tuple[int, int], center_crop: bool = False
) -> torch.Tensor:
    """One image file as uint8 (C, H, W): mode L (C=1) or RGB (C=3), resized (bilinear)
    to ``size`` = (H, W) when it differs. DataError for a file that is not a readable image,
    and for one whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels (it is
    refused before anything is decoded).

    ``center_crop``: as torchvision's ImageNet evaluation (Resize(256), CenterCrop(224)):
    the shorter side is resized to ``max(size) / CROP_FRACTION``, keeping the aspect
    ratio, and the centre ``size`` is cut out.
    """
    from PIL import Image

    if in_channels not in (1, 3):
        raise DataError(f"in_channels must be 1 or 3, not {in_channels}")
    with _open_image(path) as img:
        img = img.convert("L" if in_channels == 1 else "RGB")
        h, w = size
        if center_crop:
            side = round(max(h, w) / CROP_FRACTION)
            iw, ih = img.size
            scale = side / min(iw, ih)
            rw, rh = max(w, round(iw * scale)), max(h, round(ih * scale))
            img = img.resize((rw, rh), Image.BILINEAR)
            left, top = (rw - w) // 2, (rh - h) // 2
            img = img.crop((left, top, left + w, top + h))
        elif img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


@contextlib.contextmanager
def _open_image(path: str | os.PathLike):
    """Pillow's image at ``path``, its header checked; any failure to open or decode it
    inside the block becomes DataError.

    Only the header has been read when the block starts: a declared size of zero or of
    more than MAX_IMAGE_PIXELS pixels (or Pillow's own limit, if lower) is refused
    there, and Pillow's decompression-bomb warning is an error, never a warning.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{path}: refused, too many pixels ({exc})") from None
        except MemoryError:
            raise
        except Exception as exc:  # a corrupt image can make a decoder raise almost anything
            raise DataError(f"{path}: not a readable image ({_reason(exc)})") from None
        with img:
            w, h = img.size
            limit = min(MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS)
            if w * h > limit:
                raise DataError(
                    f"{path}: refused, its header declares {w}x{h} = {w * h:,} pixels, more "
                    f"than the limit of {limit:,} (a decompression bomb, or an image to "
                    "shrink first)"
                )
            if w < 1 or h < 1:
                raise DataError(f"{path}: not a readable image (it has {w}x{h} pixels)")
            try:
                yield img
            except (DataError, MemoryError):
                raise
            except Exception as exc:
                raise DataError(f"{path}: not a readable image ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Reasons a file or folder of an image folder is left out (keys of Dataset.skipped).
NOT_IMAGE = "files not " + " ".join(IMAGE_EXTENSIONS)
HIDDEN = "hidden files or folders"
OUTSIDE = "files outside a class folder"
EMPTY_CLASS = "class folders without images"
BESIDE_SPLITS = "folders beside train/ and test/"
LINKED = "links to folders (not followed)"


class _Tally:
    """What a walk over an image folder left out, and how many images were nested."""

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}
        self.nested = 0

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n


def _image_files(folder: Path, tally: _Tally) -> list[Path]:
    """The images under a class folder, nested folders included (not following links to
    folders, so a link loop cannot recur), sorted by path."""
    out = []
    for here, dirs, files in os.walk(folder):
        tally.skip(HIDDEN, sum(d.startswith(".") for d in dirs))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        # os.walk lists links to folders but does not enter them
        tally.skip(LINKED, sum((Path(here) / d).is_symlink() for d in dirs))
        for name in files:
            path = Path(here) / name
            if name.startswith("."):
                tally.skip(HIDDEN)
            elif path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                tally.skip(NOT_IMAGE)
            else:
                out.append(path)
                if Path(here) != folder:
                    tally.nested += 1
    return sorted(out)


def _class_folders(root: Path, tally: _Tally) -> dict[str, list[Path]]:
    out = {}
    for sub in sorted(root.iterdir()):
        if sub.name.startswith("."):
            tally.skip(HIDDEN)
        elif sub.is_dir():
            files = _image_files(sub, tally)
            if files:
                out[sub.name] = files
            else:
                tally.skip(EMPTY_CLASS)
        else:
            tally.skip(OUTSIDE)
    return out


def _peek(path: Path) -> tuple[str, tuple[int, int]]:
    with _open_image(path) as img:
        return img.mode, (img.size[1], img.size[0])


def _stack(
    files: list[Path], channels: int, size: tuple[int, int], center_crop: bool = False
) -> torch.Tensor:
    if not files:
        return torch.empty((0, channels, *size), dtype=torch.uint8)
    out = torch.empty((len(files), channels, *size), dtype=torch.uint8)
    for i, f in enumerate(files):
        out[i] = load_image(f, channels, size, center_crop)
    return out


def load_image_folder(
    root: str | os.PathLike, image_size: int | None = None, center_crop: bool = False
) -> Dataset:
    """A dataset from a folder with one subfolder of images per class (see module doc).
    ``center_crop``: resize the shorter side and cut out the centre (:func:`load_image`).

    The dataset's name and source are the folder's absolute path.
    """
    root = Path(root).expanduser().resolve()
    tally = _Tally()
    if (root / "train").is_dir() and (root / "test").is_dir():
        for other in root.iterdir():  # what sits beside train/ and test/ is left out
            if other.name.startswith("."):
                tally.skip(HIDDEN)
            elif other.is_dir():
                if other.name not in ("train", "test"):
                    tally.skip(BESIDE_SPLITS)
            else:
                tally.skip(OUTSIDE)
        train = _class_folders(root / "train", tally)
        test = _class_folders(root / "test", tally)
        if not train:
            raise DataError(f"{root / 'train'}: no class subfolders with images (.png .jpg .bmp)")
        strays = sorted(set(test) - set(train))
        if strays:
            raise DataError(f"{root / 'test'}: classes {', '.join(strays)} have no training images")
        classes = sorted(train)
        train_files = [(f, c) for c, name in enumerate(classes) for f in train[name]]
        test_files = [(f, c) for c, name in enumerate(classes) for f in test.get(name, [])]
    else:
        found = _class_folders(root, tally)
        if not found:
            raise DataError(
                f"{root}: no class subfolders with images (.png .jpg .jpeg .bmp); "
                f"expected {root}/<class>/<image> or {root}/train/<class>/<image>"
            )
        classes = sorted(found)
        train_files, test_files = _hold_out(found, classes)
    everything = train_files + test_files
    modes = {_peek(f)[0] for f, _ in everything}
    channels = 1 if modes <= _GRAY_MODES else 3
    size = (image_size, image_size) if image_size else _peek(train_files[0][0])[1]
    if min(size) < 1:
        raise DataError(f"image size must be positive, not {size}")
    need = len(everything) * channels * size[0] * size[1]
    if need > MAX_FOLDER_BYTES:
        raise DataError(
            f"{root}: {len(everything)} images of {channels}x{size[0]}x{size[1]} would take "
            f"{need:,} bytes, more than the {MAX_FOLDER_BYTES:,}-byte limit; choose a "
            "smaller --image-size"
        )
    train_x = _stack([f for f, _ in train_files], channels, size, center_crop)
    test_x = _stack([f for f, _ in test_files], channels, size, center_crop)
    train_y = torch.tensor([c for _, c in train_files], dtype=torch.int64)
    test_y = torch.tensor([c for _, c in test_files], dtype=torch.int64)
    return Dataset(
        str(root), train_x, train_y, test_x, test_y, classes, root, tally.skipped, tally.nested
    )


def _hold_out(
    found: dict[str, list[Path]], classes: list[str]
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Hold out FOLDER_TEST_FRACTION of each class (at least one image when it has two)."""
    g = torch.Generator().manual_seed(FOLDER_SPLIT_SEED)
    train, test = [], []
    for c, name in enumerate(classes):
        files = found[name]
        n = len(files)
        k = int(round(n * FOLDER_TEST_FRACTION))
        k = max(k, 1) if n >= 2 else 0
        held = set(torch.randperm(n, generator=g)[:k].tolist())
        for i, f in enumerate(files):
            (test if i in held else train).append((f, c))
    return train, test
