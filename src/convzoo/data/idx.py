"""The IDX file format of MNIST and Fashion-MNIST: a careful reader and a writer.

An IDX file (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a big-endian header,
``0x00 0x00 <type> <ndim>`` followed by ``ndim`` uint32 sizes, then the elements in
row-major order. Files may be gzip-compressed (``.gz``); the reader recognises gzip by its
magic bytes, not by the file name.

The reader trusts nothing in the file: the magic number, the element type, the number of
dimensions and the sizes are checked against the length of the data before any large
buffer is allocated, so a truncated, oversized or corrupt file (or one whose header
declares an absurd element count) raises :class:`~convzoo.errors.DataError` naming the
file and the problem.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataError

__all__ = ["IDX_TYPES", "MAX_IDX_BYTES", "read_idx", "write_idx"]

# type code -> big-endian numpy dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {dt.newbyteorder("="): code for code, dt in IDX_TYPES.items()}

MAX_IDX_BYTES = 16 * 2**30  # the largest payload the reader accepts (16 GiB)
MAX_IDX_DIMS = 8
# deflate cannot compress better than about 1032:1; a gzip file whose header promises
# more than this ratio allows is refused before allocating the promised buffer
_MAX_DEFLATE_RATIO = 1100
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22


def _describe(path: str | os.PathLike | BinaryIO) -> str:
    if isinstance(path, (str, os.PathLike)):
        return str(path)
    return str(getattr(path, "name", "<stream>"))


def read_idx(source: str | os.PathLike | BinaryIO, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array.

    ``source`` is a path or a binary file object. Raises DataError, naming the file, for
    a missing file, a wrong magic number, an unknown element type, a bad dimension count,
    a payload larger than ``max_bytes``, a truncated file, trailing bytes, or a corrupt
    gzip stream.
    """
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            f = open(source, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise DataError(f"{name}: no such file") from None
        except OSError as exc:
            raise DataError(f"{name}: cannot open ({exc.strerror or exc})") from None
    else:
        f = source
    try:
        return _read(f, name, max_bytes)
    finally:
        if f is not source:
            f.close()


def _stream_size(f: BinaryIO) -> int | None:
    try:
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
        return end - here
    except (OSError, AttributeError, ValueError):
        return None


def _read(f: BinaryIO, name: str, max_bytes: int) -> np.ndarray:
    try:
        head = f.read(2)
        f.seek(-len(head), io.SEEK_CUR)
    except (OSError, ValueError) as exc:
        raise DataError(f"{name}: cannot read ({exc})") from None
    compressed = head == _GZIP_MAGIC
    size = _stream_size(f)  # bytes on disk (compressed size for gzip)
    stream: BinaryIO = gzip.GzipFile(fileobj=f, mode="rb") if compressed else f
    try:
        return _parse(stream, name, compressed, size, max_bytes)
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise DataError(
            f"{name}: corrupt gzip data ({exc or 'unexpected end of stream'})"
        ) from None
    finally:
        if compressed:
            stream.close()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _parse(
    stream: BinaryIO, name: str, compressed: bool, size: int | None, max_bytes: int
) -> np.ndarray:
    header = _read_exact(stream, 4)
    if len(header) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(header)} bytes, no complete header)")
    if header[0] != 0 or header[1] != 0:
        raise DataError(
            f"{name}: not an IDX file (magic number {header[:4].hex()}, expected 0000xxyy)"
        )
    code, ndim = header[2], header[3]
    if code not in IDX_TYPES:
        raise DataError(f"{name}: unknown IDX element type 0x{code:02x}")
    if not 1 <= ndim <= MAX_IDX_DIMS:
        raise DataError(f"{name}: bad IDX dimension count {ndim} (expected 1 to {MAX_IDX_DIMS})")
    dims_raw = _read_exact(stream, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header ({ndim} dimensions declared)")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    dtype = IDX_TYPES[code]
    count = math.prod(dims)
    nbytes = count * dtype.itemsize
    header_len = 4 + 4 * ndim
    shape = "x".join(map(str, dims))
    if nbytes > max_bytes:
        raise DataError(
            f"{name}: IDX header declares {shape} elements ({nbytes:,} bytes), "
            f"more than the {max_bytes:,}-byte limit"
        )
    if size is not None:
        if not compressed and size != header_len + nbytes:
            problem = "truncated" if size < header_len + nbytes else "oversized"
            raise DataError(
                f"{name}: {problem} IDX file: header declares {shape} {dtype.name} elements "
                f"({header_len + nbytes:,} bytes), file has {size:,} bytes"
            )
        if compressed and nbytes > size * _MAX_DEFLATE_RATIO + (1 << 16):
            raise DataError(
                f"{name}: truncated IDX file: header declares {shape} elements "
                f"({nbytes:,} bytes), more than {size:,} compressed bytes can hold"
            )
    try:
        out = np.empty(count, dtype=dtype)
    except MemoryError:
        raise DataError(
            f"{name}: IDX header declares {shape} elements ({nbytes:,} bytes), more than "
            "the memory available"
        ) from None
    view = memoryview(out).cast("B")
    got = 0
    while got < nbytes:
        n = stream.readinto(view[got : got + _CHUNK])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    if got < nbytes:
        raise DataError(
            f"{name}: truncated IDX file: header declares {shape} {dtype.name} elements "
            f"({nbytes:,} data bytes), only {got:,} present"
        )
    if stream.read(1):
        raise DataError(
            f"{name}: oversized IDX file: data continues past the {shape} elements "
            f"the header declares"
        )
    try:
        out = out.reshape(dims)
    except ValueError:  # e.g. 0 x 2^32-1 x 2^32-1: empty, but beyond numpy's shapes
        raise DataError(f"{name}: IDX header declares an impossible shape {shape}") from None
    if dtype.itemsize > 1:
        out = out.astype(dtype.newbyteorder("="))
    else:
        out = out.view(dtype.newbyteorder("="))
    return out


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip it when ``compress`` (default: path ends in .gz)."""
    path = Path(path)
    arr = np.asarray(array)
    native = arr.dtype.newbyteorder("=")
    if native not in _CODE_OF:
        raise DataError(f"{path}: IDX cannot store dtype {arr.dtype}")
    if not 1 <= arr.ndim <= MAX_IDX_DIMS:
        raise DataError(f"{path}: IDX stores 1 to {MAX_IDX_DIMS} dimensions, not {arr.ndim}")
    code = _CODE_OF[native]
    header = struct.pack(f">BBBB{arr.ndim}I", 0, 0, code, arr.ndim, *arr.shape)
    payload = np.ascontiguousarray(arr, dtype=IDX_TYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    data = header + payload
    if compress:
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
