"""Datasets: the IDX datasets, CIFAR-10 tarballs, image folders, and their bad inputs."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from convzoo.data.datasets import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    FOLDER_TEST_FRACTION,
    load_dataset,
    load_image,
    read_cifar_tarball,
)
from convzoo.data.idx import write_idx
from convzoo.errors import DataError


def test_real_fashion_mnist(real_fashion_mnist):
    ds = load_dataset("fashion-mnist", data_dir=real_fashion_mnist)
    assert ds.train_images.shape == (60000, 1, 28, 28)
    assert ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.train_labels.min() == 0 and ds.train_labels.max() == 9
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.classes == FASHION_MNIST_CLASSES
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 1, (28, 28))


def test_synthetic_idx_dataset(tiny_fashion_mnist):
    ds = load_dataset("fashion-mnist")
    assert ds.source == tiny_fashion_mnist
    assert ds.train_images.shape == (120, 1, 28, 28) and ds.test_images.shape == (40, 1, 28, 28)
    assert torch.bincount(ds.train_labels).tolist() == [12] * 10


def test_mnist_from_raw_files(tmp_path, data_env, make_idx_dataset):
    folder = make_idx_dataset(tmp_path / "d" / "mnist", 30, 10, compress=False)
    ds = load_dataset("mnist", data_dir=folder.parent)
    assert ds.name == "mnist" and ds.classes == [str(i) for i in range(10)]
    assert len(ds.train_labels) == 30


def test_label_count_mismatch(tmp_path, data_env, make_idx_dataset):
    folder = make_idx_dataset(tmp_path / "fashion-mnist", 30, 10)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(29, dtype=np.uint8))
    with pytest.raises(DataError, match="29 labels for the 30 images"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_label_out_of_range(tmp_path, data_env, make_idx_dataset):
    folder = make_idx_dataset(tmp_path / "fashion-mnist", 30, 10)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(10, 10, dtype=np.uint8))
    with pytest.raises(DataError, match="label 10 outside"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_images_of_wrong_type(tmp_path, data_env, make_idx_dataset):
    folder = make_idx_dataset(tmp_path / "fashion-mnist", 30, 10)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((30, 28, 28), dtype=np.float32))
    with pytest.raises(DataError, match="expected uint8 images"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_truncated_file_named(tmp_path, data_env, make_idx_dataset):
    folder = make_idx_dataset(tmp_path / "fashion-mnist", 30, 10, compress=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_unknown_name_suggests(data_env):
    with pytest.raises(DataError, match="did you mean fashion-mnist"):
        load_dataset("fashion-mnst")
    with pytest.raises(DataError, match="unknown dataset 'zzz'"):
        load_dataset("zzz")


def test_missing_dataset_says_how_to_get_it(data_env):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- CIFAR-10


def cifar_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"synthetic",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar_tarball(path: Path, extra: list[tarfile.TarInfo] | None = None, n: int = 4) -> Path:
    members = {f"data_batch_{i}": cifar_batch(n, i) for i in range(1, 6)}
    members["test_batch"] = cifar_batch(n, 9)
    members["batches.meta"] = pickle.dumps(
        {b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, protocol=2
    )
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def test_cifar_tarball(tmp_path, data_env):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    write_cifar_tarball(folder / "cifar-10-python.tar.gz")
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.classes == CIFAR10_CLASSES
    raw = pickle.loads(cifar_batch(4, 1), encoding="bytes")
    assert torch.equal(ds.train_images[:4].reshape(4, -1), torch.from_numpy(raw[b"data"]))
    assert ds.train_labels[:4].tolist() == raw[b"labels"]


def test_cifar_extracted_folder(tmp_path, data_env):
    batches = tmp_path / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for i in range(1, 6):
        (batches / f"data_batch_{i}").write_bytes(cifar_batch(3, i))
    (batches / "test_batch").write_bytes(cifar_batch(3, 7))
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert len(ds.train_labels) == 15 and ds.classes == CIFAR10_CLASSES


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


@pytest.mark.parametrize(
    "member",
    [
        _info("cifar-10-batches-py/../../evil"),
        _info("../evil"),
        _info("/etc/evil"),
        _info("cifar-10-batches-py/link", tarfile.SYMTYPE, link="/etc/passwd"),
        _info("cifar-10-batches-py/hard", tarfile.LNKTYPE, link="../../x"),
    ],
    ids=["dotdot-inside", "dotdot", "absolute", "symlink", "hardlink"],
)
def test_cifar_tarball_unsafe_member_refused(tmp_path, member):
    archive = write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", extra=[member])
    with pytest.raises(DataError, match="unsafe member"):
        read_cifar_tarball(archive)
    assert not (tmp_path.parent / "evil").exists()


def test_cifar_pickle_with_code_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = pickle.dumps(Evil()) if name == "data_batch_3" else cifar_batch(2, 0)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "cifar10").mkdir()
    archive.rename(tmp_path / "cifar10" / archive.name)
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR-10 batch .*builtins.print"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_not_a_tarball(tmp_path, data_env):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="not a readable tar.gz"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------- image folders


def test_image_folder_held_out_split(image_folder):
    ds = load_dataset(str(image_folder))
    assert ds.classes == ["cat", "dog", "fish"]
    assert ds.in_channels == 3 and ds.image_size == (20, 24)
    held = round(5 * FOLDER_TEST_FRACTION)
    assert torch.bincount(ds.test_labels).tolist() == [held] * 3
    assert torch.bincount(ds.train_labels).tolist() == [5 - held] * 3
    again = load_dataset(str(image_folder))
    assert torch.equal(ds.test_images, again.test_images)  # the held-out share is fixed
    # the class colours survive: the green channel of class 1 is brighter than class 0's
    g = ds.train_images[:, 1].float().mean(dim=(1, 2))
    assert g[ds.train_labels == 1].mean() > g[ds.train_labels == 0].mean() + 20


def test_image_folder_train_test_grayscale_resized(tmp_path, make_image_folder):
    root = make_image_folder(
        tmp_path / "g", classes=("a", "b"), per_class=3, mode="L", ext=".bmp", split=True
    )
    ds = load_dataset(str(root), image_size=16)
    assert ds.classes == ["a", "b"] and ds.in_channels == 1
    assert ds.train_images.shape == (6, 1, 16, 16) and ds.test_images.shape == (6, 1, 16, 16)
    assert ds.name == str(root) and ds.source == root


def test_image_folder_mixed_modes_and_sizes_become_rgb(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "m", classes=("a",), per_class=2, mode="L", size=(10, 10))
    make_image_folder(root, classes=("b",), per_class=2, ext=".jpg", size=(30, 12))
    ds = load_dataset("m", data_dir=tmp_path)  # a folder name relative to data_dir
    assert ds.in_channels == 3 and ds.image_size == (10, 10)


def test_corrupt_image_named(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "c", per_class=3)
    bad = root / "dog" / "dog_001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError, match=r"dog_001\.png: not a readable image"):
        load_dataset(str(root))
    (root / "dog" / "dog_001.png").write_bytes(b"plain text, not an image")
    with pytest.raises(DataError, match=r"dog_001\.png"):
        load_dataset(str(root))


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "class").mkdir(parents=True)
    with pytest.raises(DataError, match="no class subfolders with images"):
        load_dataset(str(tmp_path / "empty"))


def test_load_image(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "i", classes=("a",), per_class=1)
    path = root / "a" / "a_000.png"
    assert load_image(path, 3, (20, 24)).shape == (3, 20, 24)
    x = load_image(path, 1, (7, 9))
    assert x.shape == (1, 7, 9) and x.dtype == torch.uint8
    with pytest.raises(DataError, match="no such file"):
        load_image(tmp_path / "none.png", 3, (4, 4))
    (tmp_path / "t.png").write_text("nope")
    with pytest.raises(DataError, match=r"t\.png: not a readable image"):
        load_image(tmp_path / "t.png", 3, (4, 4))


def test_incomplete_data_dir_is_an_error_not_a_fallback(tmp_path, data_env, make_idx_dataset):
    make_idx_dataset(data_env.system / "fashion-mnist", 10, 10)
    assert load_dataset("fashion-mnist").source == data_env.system / "fashion-mnist"
    folder = make_idx_dataset(tmp_path / "fashion-mnist", 10, 10)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(err.value).startswith(f"--data-dir {tmp_path}: no complete Fashion-MNIST there")
    assert "lacks t10k-images-idx3-ubyte.gz" in str(err.value)


def test_image_folder_counts_what_it_leaves_out(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "f", classes=("cat", "dog"), per_class=3)
    assert load_dataset(str(root)).notes == ""
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "anim.gif").write_bytes(b"GIF89a")
    (root / "dog" / ".DS_Store").write_bytes(b"")
    (root / "dog" / ".thumbs").mkdir()
    (root / "README").write_text("about this folder")
    (root / "empty").mkdir()
    nested = root / "dog" / "2019"
    nested.mkdir()
    (root / "dog" / "dog_000.png").rename(nested / "dog_000.png")
    ds = load_dataset(str(root))
    assert ds.classes == ["cat", "dog"]
    assert len(ds.train_labels) + len(ds.test_labels) == 6  # the nested image is in
    assert ds.nested == 1
    assert ds.skipped == {
        "files not .png .jpg .jpeg .bmp": 2,
        "hidden files or folders": 2,
        "files outside a class folder": 1,
        "class folders without images": 1,
    }
    assert ds.notes == (
        "skipped 1 class folders without images, 2 files not .png .jpg .jpeg .bmp, 1 files "
        "outside a class folder, 2 hidden files or folders; 1 image from nested folders"
    )


def test_nested_images_belong_to_their_top_level_class(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "n", classes=("a", "b"), per_class=2, split=True)
    deep = root / "train" / "b" / "x" / "y"
    deep.mkdir(parents=True)
    for f in sorted((root / "train" / "b").glob("*.png")):
        f.rename(deep / f.name)
    (root / "extra").mkdir()
    (deep / "loop").symlink_to(root / "train" / "b", target_is_directory=True)
    ds = load_dataset(str(root))
    assert ds.classes == ["a", "b"] and ds.nested == 2
    assert torch.bincount(ds.train_labels).tolist() == [2, 2]
    assert ds.skipped == {
        "folders beside train/ and test/": 1,
        "links to folders (not followed)": 1,
    }
