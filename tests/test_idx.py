"""The IDX reader and writer: round trips, and every kind of bad file."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convzoo.data.idx import read_idx, write_idx
from convzoo.errors import DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((5, 3, 4)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, arr)


def test_round_trip_one_dimension_and_file_object(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels", labels)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(read_idx(f), labels)
    np.testing.assert_array_equal(read_idx(io.BytesIO(path.read_bytes())), labels)


def test_big_endian_on_disk(tmp_path):
    path = write_idx(tmp_path / "x", np.array([1, 256], dtype=np.int32))
    assert path.read_bytes() == b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + struct.pack(
        ">2i", 1, 256
    )


def header(code: int, dims: tuple[int, ...]) -> bytes:
    return struct.pack(f">BBBB{len(dims)}I", 0, 0, code, len(dims), *dims)


GOOD = header(0x08, (2, 3)) + bytes(range(6))


@pytest.mark.parametrize(
    "data, problem",
    [
        (GOOD[:-1], "truncated"),
        (GOOD + b"\x00", "oversized"),
        (GOOD[:3], "truncated"),
        (GOOD[:9], "truncated IDX header"),
        (b"\x01\x00" + GOOD[2:], "not an IDX file"),
        (b"\x00\x00\x07\x02" + GOOD[4:], "unknown IDX element type 0x07"),
        (b"\x00\x00\x08\x00", "dimension count 0"),
        (b"\x00\x00\x08\x20" + bytes(128), "dimension count 32"),
        (header(0x08, (10**6, 10**6)) + bytes(10), "limit"),
        (header(0x0E, (3000, 1000, 1000)), "limit"),
        (b"", "truncated"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_bad_files_raise_clear_errors(tmp_path, data, problem, compress):
    path = tmp_path / ("bad.gz" if compress else "bad")
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and problem in message


def test_absurd_count_refused_before_allocation(tmp_path, monkeypatch):
    """A header promising ~10^12 elements is refused without allocating the buffer."""

    def no_alloc(*args, **kwargs):
        raise AssertionError("allocated a buffer for an absurd header")

    path = tmp_path / "absurd"
    path.write_bytes(header(0x08, (10**6, 10**6)) + bytes(100))
    monkeypatch.setattr(np, "empty", no_alloc)
    with pytest.raises(DataError, match="limit"):
        read_idx(path)


def test_gzip_header_promising_more_than_the_file_can_hold(tmp_path, monkeypatch):
    """Under the size limit, but far more than the compressed bytes could expand to."""
    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(header(0x08, (10**9,)) + bytes(50)))
    monkeypatch.setattr(np, "empty", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(GOOD))
    data[-6] ^= 0xFF  # break the CRC
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(path)
    path.write_bytes(gzip.compress(GOOD)[:-10])
    with pytest.raises(DataError, match=r"crc\.gz"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nothing")


def test_writer_refuses_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="cannot store"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dims=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 255)), max_size=3),
    compress=st.booleans(),
)
def test_property_reader_returns_right_shape_or_data_error(dims, code, cut, flips, compress):
    """Random truncations and header corruptions: a right-shaped array or DataError."""
    dtype = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    payload = np.arange(int(np.prod(dims))).astype(dtype).tobytes()
    data = bytearray(header(code, tuple(dims)) + payload)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    data = bytes(data[: max(len(data) - cut, 0)] if cut % 3 else data)
    if compress:
        data = gzip.compress(data)
    try:
        out = read_idx(io.BytesIO(data))
    except DataError:
        return
    raw = gzip.decompress(data) if compress else data
    ndim = raw[3]
    declared = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    assert out.shape == declared
    assert len(raw) == 4 + 4 * ndim + out.size * out.dtype.itemsize
