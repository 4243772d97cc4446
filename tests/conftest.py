"""Shared test fixtures: small synthetic datasets written to temporary folders.

Fixtures (all write under pytest's ``tmp_path``; nothing touches the network or ~/.cache):

* ``data_env``: an isolated data environment: ``$XDG_CACHE_HOME`` points into tmp_path,
  ``$CONVZOO_DATA`` and ``$CONVZOO_MIRROR`` are unset, and no system-wide copies are
  searched. Returns a namespace with ``cache`` (the convzoo cache folder) and ``system``
  (an empty folder standing for /usr/share/datasets, searched last).
* ``make_idx_dataset``: a function ``(folder, n_train=120, n_test=40, ...) -> folder``
  writing the four Fashion-MNIST/MNIST IDX files (gzipped by default). The images are
  learnable: each class draws a bright square at its own place on a noisy background.
* ``idx_dataset_dir``: a folder made by ``make_idx_dataset`` with the defaults.
* ``tiny_fashion_mnist``: ``data_env`` plus a small synthetic Fashion-MNIST (120 train,
  40 test, 1x28x28, 10 classes) that ``load_dataset("fashion-mnist")`` and
  ``convzoo train --dataset fashion-mnist`` then find through ``$CONVZOO_DATA``.
  Returns its folder.
* ``make_image_folder``: a function ``(root, classes=("cat", "dog", "fish"), per_class=5,
  size=(20, 24), mode="RGB", ext=".png", split=False) -> root`` writing one subfolder of
  images per class (``root/train/<class>`` and ``root/test/<class>`` when ``split``).
  ``size`` is (H, W). Each class has its own colour, so the images are learnable.
* ``image_folder``: a folder made by ``make_image_folder`` with the defaults.
* ``real_fashion_mnist``: the folder of the real Fashion-MNIST
  (/usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist); skips the test
  when it is absent.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def synthetic_images(labels: np.ndarray, size: int = 28, seed: int = 0) -> np.ndarray:
    """uint8 (N, size, size): noise plus a bright square whose place encodes the label."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
    side = max(size // 5, 2)
    for k in np.unique(labels):
        row, col = divmod(int(k), 4)
        y0 = (row * size) // 3 + 1
        x0 = (col * size) // 4 + 1
        images[labels == k, y0 : y0 + side, x0 : x0 + side] = 230
    return images


def write_idx_dataset(
    folder: str | Path,
    n_train: int = 120,
    n_test: int = 40,
    *,
    num_classes: int = 10,
    size: int = 28,
    compress: bool = True,
    seed: int = 0,
) -> Path:
    """Write a Fashion-MNIST-layout IDX dataset (balanced labels) into ``folder``."""
    from convzoo.data.idx import write_idx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.uint8)
        images = synthetic_images(labels, size, seed=seed + (split == "test"))
        write_idx(folder / (IDX_NAMES[f"{split}_images"] + suffix), images)
        write_idx(folder / (IDX_NAMES[f"{split}_labels"] + suffix), labels)
    return folder


def write_image_folder(
    root: str | Path,
    classes: tuple[str, ...] = ("cat", "dog", "fish"),
    per_class: int = 5,
    size: tuple[int, int] = (20, 24),
    mode: str = "RGB",
    ext: str = ".png",
    split: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``per_class`` images per class (and as many again under test/ when split)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    splits = ("train", "test") if split else ("",)
    for part in splits:
        for k, name in enumerate(classes):
            folder = root / part / name if part else root / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(80 * k) % 256, (160 + 50 * k) % 256, (40 * k + 20) % 256])
            for i in range(per_class):
                pixels = rng.integers(0, 40, size=(h, w, 3)) + colour
                img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
                if mode != "RGB":
                    img = img.convert(mode)
                img.save(folder / f"{name}_{i:03d}{ext}")
    return root


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    """No $CONVZOO_DATA, a private cache, and no system-wide copies (see module doc)."""
    from convzoo.data import locate

    cache_home = tmp_path / "xdg-cache"
    system = tmp_path / "system-datasets"
    system.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv("CONVZOO_DATA", raising=False)
    monkeypatch.delenv("CONVZOO_MIRROR", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", [system])
    return types.SimpleNamespace(cache=cache_home / "convzoo", system=system)


@pytest.fixture
def make_idx_dataset():
    """``write_idx_dataset(folder, n_train=120, n_test=40, *, num_classes=10, size=28,
    compress=True, seed=0) -> folder``."""
    return write_idx_dataset


@pytest.fixture
def idx_dataset_dir(tmp_path) -> Path:
    """A small synthetic Fashion-MNIST-layout folder (120 train, 40 test, gzipped)."""
    return write_idx_dataset(tmp_path / "idx-data")


@pytest.fixture
def tiny_fashion_mnist(tmp_path, data_env, monkeypatch) -> Path:
    """A tiny synthetic Fashion-MNIST that load_dataset("fashion-mnist") finds."""
    root = tmp_path / "convzoo-data"
    folder = write_idx_dataset(root / "fashion-mnist")
    monkeypatch.setenv("CONVZOO_DATA", str(root))
    return folder


@pytest.fixture
def make_image_folder():
    """``write_image_folder(root, classes=("cat", "dog", "fish"), per_class=5,
    size=(20, 24), mode="RGB", ext=".png", split=False, seed=0) -> root``."""
    return write_image_folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three classes (cat, dog, fish) of five 20x24 RGB PNGs each."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def real_fashion_mnist() -> Path:
    """The real Fashion-MNIST folder; the test is skipped when it is not installed."""
    if not all((REAL_FASHION_MNIST / f"{n}.gz").is_file() for n in IDX_NAMES.values()):
        pytest.skip(f"the real Fashion-MNIST is not in {REAL_FASHION_MNIST}")
    return REAL_FASHION_MNIST


# The largest families: a test that runs every model keeps these in the slow lane.
HEAVY_MODELS = (
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "resnet101",
    "resnet152",
    "vgg19",
)


def by_weight(names):
    """``names`` as pytest parameters, the heavy models (:data:`HEAVY_MODELS`) marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_MODELS else n for n in names]


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (the tests of tiny models use it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
