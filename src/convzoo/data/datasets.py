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

import difflib
import io
import os
import pickle
import posixpath
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import locate
from .dataset import Dataset
from .folders import (
    FOLDER_TEST_FRACTION,
    IMAGE_EXTENSIONS,
    MAX_FOLDER_BYTES,
    MAX_IMAGE_PIXELS,
    load_image,
    load_image_folder,
)
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
_MAX_CIFAR_MEMBER = 256 * 2**20  # a CIFAR-10 batch is about 30 MB


def _normalise_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    aliases = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10"}
    return aliases.get(key, key)


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    center_crop: bool = False,
) -> Dataset:
    """Load a dataset by name (see :data:`DATASET_NAMES`) or from a folder of images.

    ``data_dir`` is searched first for a named dataset (see :mod:`convzoo.data.locate`),
    and for a folder name that is not itself a directory, ``data_dir/name`` is tried.
    ``image_size`` sets the size images of a folder are resized to; the named datasets
    keep their native size (resize batches with ``Loader(resize=...)``); ``center_crop``
    resizes a folder's images keeping their aspect ratio and cuts out the centre.
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
            return load_image_folder(folder, image_size, center_crop)
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
