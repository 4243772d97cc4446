"""Fuzzing the image readers (load_image and image-folder datasets) with hostile files.

Random bytes, truncated and damaged PNG/JPEG/BMP files, zero-size images and headers
declaring enormous sizes: each file is either read correctly or refused with DataError
(one line), never crashes, hangs or decodes a decompression bomb.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageFile

from convzoo.data.datasets import MAX_IMAGE_PIXELS, load_dataset, load_image
from convzoo.errors import DataError

from .common import FUZZ, encoded_image, png_bytes, works_or_refuses

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp"}
VALID = {fmt: encoded_image(fmt, mode=mode) for fmt in FORMATS for mode in ("RGB",)}
VALID_GRAY = {fmt: encoded_image(fmt, mode="L", seed=1) for fmt in FORMATS}


class Decoded(BaseException):
    """Raised by a patched decoder: a refused image must never reach it."""


@pytest.fixture
def no_decoding(monkeypatch):
    def load(self, *args, **kwargs):
        raise Decoded(f"decoding a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def _check_image(path, tally, kind):
    """load_image works or refuses; a result has the asked shape and dtype."""
    refused = False
    for channels in (1, 3):
        status, value = works_or_refuses(load_image, path, channels, (8, 6))
        if status == "ok":
            assert value.dtype == torch.uint8 and tuple(value.shape) == (channels, 8, 6)
        else:
            assert isinstance(value, DataError) and str(path) in str(value)
            refused = True
    tally.input(f"image {kind}", refused=refused)


@FUZZ
@given(data=st.binary(max_size=2048), ext=st.sampled_from(sorted(FORMATS.values())))
def test_random_bytes(tmp_path, tally, data, ext):
    path = tmp_path / f"random{ext}"
    path.write_bytes(data)
    _check_image(path, tally, "random bytes")


@FUZZ
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    gray=st.booleans(),
    cut=st.floats(0.0, 1.0, exclude_max=True),
)
def test_truncated(tmp_path, tally, fmt, gray, cut):
    data = (VALID_GRAY if gray else VALID)[fmt]
    path = tmp_path / f"cut{FORMATS[fmt]}"
    path.write_bytes(data[: int(len(data) * cut)])
    _check_image(path, tally, "truncated")


@FUZZ
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    edits=st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    ),
)
def test_damaged(tmp_path, tally, fmt, edits):
    data = bytearray(VALID[fmt])
    for where, value in edits:
        data[int(where * len(data))] = value
    path = tmp_path / f"damaged{FORMATS[fmt]}"
    path.write_bytes(bytes(data))
    _check_image(path, tally, "damaged")


@FUZZ
@given(
    width=st.integers(0, 2**31 - 1),
    height=st.integers(0, 2**31 - 1),
    color_type=st.sampled_from([0, 2, 4, 6]),
)
def test_png_declared_size(tmp_path, tally, no_decoding, width, height, color_type):
    """Any declared size: zero, huge, or in between; never decoded beyond the limit."""
    path = tmp_path / "declared.png"
    path.write_bytes(png_bytes(width, height, color_type=color_type))
    try:
        _check_image(path, tally, "declared size")
    except Decoded:
        # only an image within the pixel limit may be decoded
        assert 0 < width * height <= MAX_IMAGE_PIXELS, (width, height)


def _jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(VALID["JPEG"])
    i = data.index(b"\xff\xc0")  # baseline start-of-frame: length, precision, height, width
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(VALID["BMP"])
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


BOMBS = {
    "png-100000x100000.png": png_bytes(100_000, 100_000),
    "png-9000x9000.png": png_bytes(9000, 9000, color_type=0),
    "png-10000x10000.png": png_bytes(10_000, 10_000),  # Pillow only warns here
    "png-1x2000000000.png": png_bytes(1, 2_000_000_000),
    "jpeg-65000x65000.jpg": _jpeg_with_size(65_000, 65_000),
    "jpeg-9000x9000.jpg": _jpeg_with_size(9000, 9000),
    "bmp-100000x100000.bmp": _bmp_with_size(100_000, 100_000),
    "bmp-9000x-9000.bmp": _bmp_with_size(9000, -9000),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_decompression_bombs_refused_before_decoding(tmp_path, tally, no_decoding, name):
    data = BOMBS[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError, match="pixels") as err:
        load_image(path, 3, (28, 28))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    tally.input("image bomb header")
    # the same file in an image folder: refused while the folder is scanned
    root = tmp_path / "folder"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for k in range(3):
        (root / "b" / f"ok{k}.png").write_bytes(VALID["PNG"])
    (root / "a" / name).write_bytes(data)
    with pytest.raises(DataError, match="pixels"):
        load_dataset(str(root))
    tally.input("image folder with a bomb header")


def test_bomb_limit_is_below_pillows():
    """convzoo's limit applies first, so Pillow never just warns about an image we read."""
    assert 0 < MAX_IMAGE_PIXELS <= Image.MAX_IMAGE_PIXELS


def test_a_valid_image_still_reads(tmp_path):
    """The fuzzed files are not refused wholesale: the undamaged ones read exactly."""
    for fmt, data in VALID.items():
        path = tmp_path / f"valid{FORMATS[fmt]}"
        path.write_bytes(data)
        with Image.open(path) as img:
            expected = np.asarray(img.convert("RGB"))
        got = load_image(path, 3, (10, 12))
        if fmt != "JPEG":
            assert torch.equal(got, torch.from_numpy(expected.copy()).permute(2, 0, 1)), fmt
        else:
            assert got.shape == (3, 10, 12)


def test_folder_too_big_to_hold_is_refused_before_allocating(tmp_path, tally, image_folder):
    """--image-size 100000 on 15 images would need 450 GB: refused, nothing allocated."""
    with pytest.raises(DataError, match="image-size|too large|bytes"):
        load_dataset(str(image_folder), image_size=100_000)
    tally.input("image folder too big")


@FUZZ
@given(
    bad=st.sampled_from(["random", "truncated", "zero", "bomb", "empty"]),
    position=st.integers(0, 14),
)
def test_one_bad_file_in_a_folder(tmp_path_factory, tally, bad, position):
    """A folder with one bad file among good ones: the whole folder is refused by name."""
    root = tmp_path_factory.mktemp("folder")
    files = []
    for k, name in enumerate(("cat", "dog", "fish")):
        (root / name).mkdir()
        for i in range(5):
            path = root / name / f"{i}.png"
            path.write_bytes(encoded_image("PNG", seed=k * 5 + i))
            files.append(path)
    victim = files[position]
    data = {
        "random": bytes(range(256)) * 3,
        "truncated": encoded_image("PNG")[:40],
        "zero": png_bytes(0, 10),
        "bomb": png_bytes(50_000, 50_000),
        "empty": b"",
    }[bad]
    victim.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_dataset(str(root))
    assert victim.name in str(err.value) and "\n" not in str(err.value)
    tally.input("image folder with a bad file")
