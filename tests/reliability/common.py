"""Helpers shared by the reliability tests."""

from __future__ import annotations

import contextlib
import io
import os
import resource
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable

from hypothesis import HealthCheck, settings

from convzoo.errors import ConvzooError

# Fuzzing settings: no example database (nothing written into the repository), a
# generous deadline on a shared machine (a hang still fails: see run_limited), and
# modest example counts so the whole fuzz set stays well under a minute.
FUZZ = settings(
    max_examples=100,
    deadline=2000,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def works_or_refuses(fn: Callable, *args, **kwargs):
    """Call ``fn``: it must return, or raise a ConvzooError with a one-line message.

    Returns ``("ok", value)`` or ``("refused", error)``. Anything else (another
    exception type, an empty or multi-line message) propagates and fails the test.
    """
    try:
        return "ok", fn(*args, **kwargs)
    except ConvzooError as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} without a message"
        assert "\n" not in message.strip(), f"multi-line message: {message!r}"
        return "refused", exc


def png_bytes(width: int, height: int, *, color_type: int = 2, idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (8-bit; RGB by default).

    ``idat`` is the compressed pixel data; by default a few bytes of deflated zeros,
    far too few for a large declared size (a decompression bomb's header, or a
    truncated image).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded_image(fmt: str, size=(12, 10), mode: str = "RGB", seed: int = 0) -> bytes:
    """A small valid image file (PNG, JPEG or BMP) with noisy pixels, as bytes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def run_limited(
    code: str,
    *,
    memory: int | None = None,
    fsize: int | None = None,
    timeout: float = 120,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -c code`` with one thread; optional limits on address space growth
    (``memory`` bytes beyond what the interpreter holds once ``code`` calls
    ``limit_memory()``) and file size (``fsize`` bytes, SIGXFSZ ignored so writes fail
    with EFBIG instead of killing the process)."""
    prelude = (
        "import resource, signal\n"
        f"MEMORY = {memory!r}\n"
        f"FSIZE = {fsize!r}\n"
        "def limit_memory():\n"
        "    if MEMORY is None:\n"
        "        return\n"
        "    with open('/proc/self/status') as f:\n"
        "        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmSize:'))\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY, vm + MEMORY))\n"
        "if FSIZE is not None:\n"
        "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE, FSIZE))\n"
    )
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@contextlib.contextmanager
def memory_ceiling(extra: int):
    """Lower this process's soft address-space limit to what it maps now plus ``extra``
    bytes for the block (then restore it): an allocation the code under test should
    never make fails fast instead of exhausting the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    ceiling = vm + extra if hard == resource.RLIM_INFINITY else min(vm + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
