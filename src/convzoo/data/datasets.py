"""Datasets as whole uint8 tensors: Fashion-MNIST, MNIST, CIFAR-10 and image folders.

Every dataset is loaded once, completely, into memory: ``train_images`` and
``test_images`` are uint8 tensors (N, C, H, W), labels int64, plus the class names.

* ``fashion-mnist`` (Xiao et al. 2017) and ``mnist`` (LeCun et al. 1998): the four IDX
  files, gzipped or raw; 60,000 + 10,000 images of 1x28x28.
* ``cifar10`` (Krizhevsky 2009): the python tarball ``cifar-10-python.tar.gz`` (read
  directly, never extracted) or its extracted ``cifar-10-batches-py/``; 50,000 + 10,000
  images of 3x32x32. The batches are pickles of numpy arrays and lists; they are read
  with an unpickler that can build nothing but those.
* any folder of images in the one-folder-per-class layout (PNG, JPEG, BMP, read with
  Pillow). Images in folders nested below a class folder belong to that class (a class
  folder often sorts its images by source or date, ``dog/2019/x.png``; the top-level
  folder is the label either way, and skipping them would lose data without a word);
  :attr:`Dataset.nested` counts them, so a layout one level too high shows at once.
  Files that are not images by their extension, hidden files, files outside any class
  folder, links to folders inside a class folder (never followed, so a link loop
  cannot recur) and class folders without images are left out and counted in
  :attr:`Dataset.skipped`; an image that cannot be read is an error naming the file.
  If the folder has ``train/`` and ``test/`` subfolders they are the splits;
  otherwise a fixed, stratified 20% of each class (:data:`FOLDER_TEST_FRACTION`, chosen
  by a generator seeded with 0, so always the same images) is held out as the test split.
  Images are grayscale (1 channel) when every image is grayscale, else RGB, and are
  resized (bilinear) to ``image_size`` or to the size of the first image.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import pickle
import posixpath
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import locate
from .idx import read_idx

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "FOLDER_TEST_FRACTION",
    "IMAGE_EXTENSIONS",
    "MAX_FOLDER_BYTES",
    "MAX_IMAGE_PIXELS",
    "MNIST_CLASSES",
    "Dataset",
    "load_dataset",
    "load_image",
    "read_cifar_tarball",
]

DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
FOLDER_TEST_FRACTION = 0.2
FOLDER_SPLIT_SEED = 0
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_MAX_CIFAR_MEMBER = 256 * 2**20  # a CIFAR-10 batch is about 30 MB
# An image whose header declares more pixels than this (8192 x 8192) is refused before
# it is decoded: lower than Pillow's decompression-bomb limit, so Pillow never merely
# warns about an image convzoo reads.
MAX_IMAGE_PIXELS = 64 * 2**20
# The most memory an image-folder dataset may take (N x C x H x W bytes of uint8).
MAX_FOLDER_BYTES = 16 * 2**30


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


def _normalise_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    aliases = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10"}
    return aliases.get(key, key)


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> Dataset:
    """Load a dataset by name (see :data:`DATASET_NAMES`) or from a folder of images.

    ``data_dir`` is searched first for a named dataset (see :mod:`convzoo.data.locate`),
    and for a folder name that is not itself a directory, ``data_dir/name`` is tried.
    ``image_size`` sets the size images of a folder are resized to; the named datasets
    keep their native size (resize batches with ``Loader(resize=...)``).
    Raises DataError for a missing, unknown or unreadable dataset.
    """
    key = _normalise_name(name)
    if key in DATASET_NAMES and not _is_dir(name):
        found = locate.find_dataset(key, data_dir)
        if found is None and data_dir is not None and str(data_dir) != "":
            raise DataError(locate.not_in_data_dir(key, data_dir))
        if found is None:
            raise DataError(f"{key} not found (see `convzoo data where`); {locate.how_to_get(key)}")
        if key == "cifar10":
            return _load_cifar(found)
        return _load_idx(key, found)
    for folder in _folder_candidates(name, data_dir):
        if folder.is_dir():
            return load_image_folder(folder, image_size)
    close = difflib.get_close_matches(key, DATASET_NAMES, n=3, cutoff=0.4)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise DataError(
        f"unknown dataset {name!r}: not one of {', '.join(DATASET_NAMES)} and not a "
        f"directory; {hint}(a folder of images needs one subfolder per class)"
    )


def _is_dir(name: str) -> bool:
    return os.sep in name and Path(name).is_dir()


def _folder_candidates(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    out = [Path(name).expanduser()]
    if data_dir is not None and not Path(name).is_absolute():
        out.append(Path(data_dir).expanduser() / name)
    return out


# ---------------------------------------------------------------- IDX datasets


def _load_idx(key: str, found: locate.Located) -> Dataset:
    classes = FASHION_MNIST_CLASSES if key == "fashion-mnist" else MNIST_CLASSES
    f = found.files
    train_x, train_y = _idx_pair(f["train_images"], f["train_labels"], len(classes))
    test_x, test_y = _idx_pair(f["test_images"], f["test_labels"], len(classes))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{f['test_images']}: images of {tuple(test_x.shape[1:])} differ from the "
            f"training images' {tuple(train_x.shape[1:])}"
        )
    return Dataset(key, train_x, train_y, test_x, test_y, list(classes), found.folder)


def _idx_pair(
    images_path: Path, labels_path: Path, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{images_path}: expected uint8 images of shape N x H x W, got "
            f"{images.dtype} {'x'.join(map(str, images.shape))}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{labels_path}: expected one integer label per image")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path.name}"
        )
    y = torch.from_numpy(labels.astype(np.int64))
    _check_labels(y, num_classes, labels_path)
    x = torch.from_numpy(images)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    return x, y


def _check_labels(y: torch.Tensor, num_classes: int, where: object) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y.max()) if int(y.max()) >= num_classes else int(y.min())
        raise DataError(
            f"{where}: label {bad} outside the {num_classes} classes 0-{num_classes - 1}"
        )


# ---------------------------------------------------------------- CIFAR-10


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what CIFAR-10's batches contain: dicts, lists, bytes, numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        core = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core
        if name == "_reconstruct":
            return _empty_reconstruct(core.multiarray._reconstruct)
        return getattr(core.numeric, name)


def _empty_reconstruct(reconstruct):
    """numpy's array-rebuild call, for the empty shell a pickled array starts as.

    A pickled array is rebuilt as an empty array whose contents then come from the
    file; a pickle asking for any other shape would get memory that is not in the
    file (uninitialised, and as large as it likes), so it is refused.
    """

    def rebuild(subtype, shape, dtype):
        if tuple(shape) != (0,):
            raise pickle.UnpicklingError(
                f"refusing to build an array of shape {shape} from nothing"
            )
        return reconstruct(subtype, shape, dtype)

    return rebuild


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # a hostile or corrupt pickle can raise almost anything
        raise DataError(f"{where}: not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a CIFAR-10 batch (a {type(obj).__name__}, not a dict)")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(data: bytes, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _unpickle(data, where)
    x, y = batch.get("data"), batch.get("labels")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(f"{where}: 'data' is not a uint8 array of N x 3072 pixels")
    if not isinstance(y, (list, np.ndarray)) or len(y) != len(x):
        raise DataError(f"{where}: {len(y) if y is not None else 0} labels for {len(x)} images")
    try:
        labels = torch.tensor(np.asarray(y, dtype=np.int64))
    except (TypeError, ValueError):
        raise DataError(f"{where}: labels are not integers") from None
    _check_labels(labels, len(CIFAR10_CLASSES), where)
    return torch.from_numpy(np.ascontiguousarray(x).reshape(-1, 3, 32, 32)), labels


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse members that would land outside the target folder if extracted."""
    name = member.name
    parts = posixpath.normpath(name).split("/")
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ":" in parts[0] or ".." in parts:
        raise DataError(f"{archive}: unsafe member {name!r} (path outside the archive's folder)")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: unsafe member {name!r} (links and devices are refused)")


def read_cifar_tarball(archive: str | os.PathLike) -> dict[str, bytes]:
    """The CIFAR-10 batch files of a python tarball, read without extracting anything.

    Every member is checked: an absolute path, a ``..`` component, a link or a device file
    makes the whole archive be refused with DataError. Returns {member basename: bytes}.
    """
    archive = Path(archive)
    wanted = set(locate.CIFAR_MEMBERS) | {"batches.meta"}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            # one pass in archive order (a gzip stream only seeks forward cheaply); the
            # batches read so far are only in memory, so a bad member later loses nothing
            for member in tar:
                _check_member(member, archive)
                base = posixpath.basename(member.name)
                if member.isfile() and base in wanted and base not in out:
                    if member.size > _MAX_CIFAR_MEMBER:
                        raise DataError(f"{archive}: member {member.name!r} is implausibly large")
                    f = tar.extractfile(member)
                    if f is not None:
                        out[base] = f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: not a readable tar.gz archive ({exc})") from None
    return out


def _load_cifar(found: locate.Located) -> Dataset:
    if "archive" in found.files:
        where = found.files["archive"]
        blobs = read_cifar_tarball(where)
    else:
        where = found.files["folder"]
        blobs = {}
        for name in (*locate.CIFAR_MEMBERS, "batches.meta"):
            if (where / name).is_file():
                blobs[name] = (where / name).read_bytes()
    missing = [m for m in locate.CIFAR_MEMBERS if m not in blobs]
    if missing:
        raise DataError(f"{where}: missing CIFAR-10 batches {', '.join(missing)}")
    parts = [_cifar_batch(blobs[m], f"{where}:{m}") for m in locate.CIFAR_MEMBERS]
    train_x = torch.cat([p[0] for p in parts[:5]])
    train_y = torch.cat([p[1] for p in parts[:5]])
    test_x, test_y = parts[5]
    classes = list(CIFAR10_CLASSES)
    if "batches.meta" in blobs:
        names = _unpickle(blobs["batches.meta"], f"{where}:batches.meta").get("label_names")
        if isinstance(names, list) and len(names) == 10:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return Dataset("cifar10", train_x, train_y, test_x, test_y, classes, Path(where))


# ---------------------------------------------------------------- image folders


def load_image(path: str | os.PathLike, in_channels: int, size: tuple[int, int]) -> torch.Tensor:
    """One image file as uint8 (C, H, W): mode L (C=1) or RGB (C=3), resized (bilinear)
    to ``size`` = (H, W) when it differs. DataError for a file that is not a readable image,
    and for one whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels (it is
    refused before anything is decoded).
    """
    from PIL import Image

    if in_channels not in (1, 3):
        raise DataError(f"in_channels must be 1 or 3, not {in_channels}")
    with _open_image(path) as img:
        img = img.convert("L" if in_channels == 1 else "RGB")
        h, w = size
        if img.size != (w, h):
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


def _stack(files: list[Path], channels: int, size: tuple[int, int]) -> torch.Tensor:
    if not files:
        return torch.empty((0, channels, *size), dtype=torch.uint8)
    out = torch.empty((len(files), channels, *size), dtype=torch.uint8)
    for i, f in enumerate(files):
        out[i] = load_image(f, channels, size)
    return out


def load_image_folder(root: str | os.PathLike, image_size: int | None = None) -> Dataset:
    """A dataset from a folder with one subfolder of images per class (see module doc).

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
    train_x = _stack([f for f, _ in train_files], channels, size)
    test_x = _stack([f for f, _ in test_files], channels, size)
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
