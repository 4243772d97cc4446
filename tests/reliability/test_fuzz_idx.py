"""Fuzzing the IDX reader (and the IDX datasets built on it) with hostile files.

Every input is either read correctly (the array the header declares, with the bytes
that follow it) or refused with DataError; none crashes, hangs, or allocates what its
header declares before the file is known to hold it. Declared sizes of 10^12 elements
are refused under a real memory limit, in a subprocess.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convzoo.data.datasets import load_dataset
from convzoo.data.idx import IDX_TYPES, read_idx, write_idx
from convzoo.errors import DataError

from .common import FUZZ, run_limited, works_or_refuses

CODES = sorted(IDX_TYPES)


def header(code: int, dims) -> bytes:
    return struct.pack(f">BBBB{len(dims)}I", 0, 0, code, len(dims), *dims)


def _expected(raw: bytes):
    """What a correct reader returns for the uncompressed bytes ``raw``, or None."""
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in IDX_TYPES or not 1 <= raw[3] <= 8:
        return None
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = IDX_TYPES[raw[2]]
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims, dtype=object)) * dtype.itemsize:
        return None
    try:
        return np.frombuffer(body, dtype=dtype).reshape(dims)
    except ValueError:  # a shape numpy cannot represent (empty, but too many elements)
        return None


def _check(data: bytes, raw: bytes | None, tally, kind: str) -> None:
    """read_idx on ``data`` (raw IDX bytes ``raw`` once decompressed, None when the
    gzip stream itself is broken) agrees with the format, or refuses."""
    status, value = works_or_refuses(read_idx, io.BytesIO(data))
    expected = _expected(raw) if raw is not None else None
    if status == "ok":
        assert expected is not None, "read a file that breaks the format"
        assert value.shape == expected.shape and value.dtype == expected.dtype.newbyteorder("=")
        assert np.array_equal(value, expected, equal_nan=True)
    else:
        assert isinstance(value, DataError)
        assert expected is None, f"refused a well-formed file: {value}"
    tally.input(f"idx {kind}", refused=status == "refused")


def _gunzip(data: bytes) -> bytes | None:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return None


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes(tally, data):
    _check(data, data, tally, "random bytes")


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_gzipped(tally, data):
    _check(gzip.compress(data), data, tally, "random bytes, gzipped")


@FUZZ
@given(
    code=st.sampled_from(CODES),
    dims=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8),
    extra=st.binary(max_size=64),
    compress=st.booleans(),
)
def test_any_declared_size(tally, code, dims, extra, compress):
    """Headers declaring anything up to 8 dimensions of 2^32-1: never allocated blindly."""
    raw = header(code, dims) + extra
    data = gzip.compress(raw, compresslevel=1) if compress else raw
    _check(data, raw, tally, "declared size")


@FUZZ
@given(
    code=st.sampled_from(CODES),
    dims=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6
    ),
    cut=st.floats(0, 1),
)
def test_damaged_gzip_stream(tally, code, dims, edits, cut):
    """Bytes changed inside the compressed stream (CRC, length, deflate data), then cut."""
    rng = np.random.default_rng(len(dims))
    array = rng.integers(0, 100, size=dims).astype(IDX_TYPES[code].newbyteorder("="))
    buf = io.BytesIO()
    write_idx_to(buf, array)
    data = bytearray(gzip.compress(buf.getvalue()))
    for where, value in edits:
        data[int(where * len(data))] = value
    data = bytes(data[: max(1, int(len(data) * cut))])
    _check(data, _gunzip(data), tally, "damaged gzip")


def write_idx_to(f, array: np.ndarray) -> None:
    f.write(
        header(
            next(c for c, dt in IDX_TYPES.items() if dt == array.dtype.newbyteorder(">")),
            array.shape,
        )
    )
    f.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).tobytes())


@FUZZ
@given(
    array=st.sampled_from(CODES).flatmap(
        lambda code: st.lists(st.integers(1, 4), min_size=1, max_size=3).map(
            lambda dims: (
                np.random.default_rng(sum(dims))
                .integers(-100, 100, size=dims)
                .astype(IDX_TYPES[code].newbyteorder("="))
            )
        )
    ),
    trailing=st.binary(min_size=1, max_size=16),
    compress=st.booleans(),
)
def test_trailing_bytes_are_refused(tmp_path, tally, array, trailing, compress):
    """A file continuing past its data is refused; without the extra bytes it reads back."""
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), array)
    assert np.array_equal(read_idx(path), array)
    raw = (gzip.decompress(path.read_bytes()) if compress else path.read_bytes()) + trailing
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError, match="oversized|continues"):
        read_idx(path)
    tally.input("idx trailing bytes")


@pytest.mark.slow
def test_huge_declarations_refused_under_a_memory_limit(tmp_path, tally):
    """10^12 elements (raw and gzipped), and 3 GB promised by a 3 MB gzip file, are
    refused with DataError by a process that cannot allocate more than 1 GiB more."""
    cases = {
        "1e12-raw": header(0x08, (1_000_000, 1_000_000)),
        "1e12-gz": gzip.compress(header(0x08, (1_000_000, 1_000_000)) + b"\0" * 1000),
        "1e12-f8": header(0x0E, (10_000, 10_000, 10_000)),
        # a gzip stream long enough to be plausible for 3 GB (deflate ratio), but a
        # process limited to 1 GiB more memory cannot hold it: DataError, not MemoryError
        "3e9-gz": gzip.compress(
            header(0x08, (3_000_000_000,)) + np.random.default_rng(0).bytes(3 * 2**20),
            compresslevel=1,
        ),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    code = f"""
import json, pathlib
from convzoo.data.idx import read_idx
from convzoo.errors import DataError
limit_memory()
out = {{}}
for name in {sorted(cases)!r}:
    try:
        read_idx(pathlib.Path({str(tmp_path)!r}) / name)
        out[name] = "read"
    except DataError as exc:
        out[name] = "DataError: " + str(exc)
    except MemoryError:
        out[name] = "MemoryError"
print(json.dumps(out))
"""
    proc = run_limited(code, memory=2**30)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in cases:
        assert results[name].startswith("DataError: "), (name, results[name])
        assert name in results[name]
        tally.input("idx huge declared size (memory-limited)")


@pytest.mark.parametrize(
    "member", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"]
)
@settings(parent=FUZZ, max_examples=30)
@given(
    damage=st.sampled_from(["random", "truncate", "header", "empty", "other-file"]),
    seed=st.integers(0, 2**16),
)
def test_dataset_with_one_damaged_file(tmp_path_factory, tally, member, damage, seed):
    """load_dataset("fashion-mnist") with one damaged IDX file: refused, naming the file,
    or (labels with a valid layout) read with every label in range."""
    from conftest import write_idx_dataset

    root = tmp_path_factory.mktemp("idx")
    folder = write_idx_dataset(root / "fashion-mnist", n_train=30, n_test=10, compress=False)
    path = folder / member
    data = path.read_bytes()
    rng = np.random.default_rng(seed)
    if damage == "random":
        data = rng.bytes(len(data))
    elif damage == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    elif damage == "header":
        data = bytes(rng.integers(0, 256, size=8, dtype=np.uint8)) + data[8:]
    elif damage == "empty":
        data = b""
    else:  # the images file where the labels should be, or the reverse
        other = "t10k-images-idx3-ubyte" if "labels" in member else "train-labels-idx1-ubyte"
        data = (folder / other).read_bytes()
    path.write_bytes(data)
    status, value = works_or_refuses(load_dataset, "fashion-mnist", root)
    if status == "refused":
        assert member in str(value) or "images" in str(value), value
    else:
        for labels in (value.train_labels, value.test_labels):
            assert int(labels.min()) >= 0 and int(labels.max()) < 10
    tally.input("idx dataset with a damaged file", refused=status == "refused")
    shutil.rmtree(root)
