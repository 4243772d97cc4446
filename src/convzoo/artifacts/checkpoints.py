"""Checkpoints: plain dicts written with torch.save, read with ``weights_only=True``."""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError
from .files import fsync_dir

CHECKPOINT_FORMAT = "convzoo-checkpoint/1"
CHECKPOINT_NAMES = ("last", "best", "last.prev")
CHECKPOINT_DIR = "checkpoints"


class UnsafeCheckpointError(CheckpointError):
    """A file that would need arbitrary code to load; it is never unpickled."""


class CheckpointWriteError(CheckpointError, OSError):
    """The file system refused a checkpoint (disk full, file-size limit, permissions).

    It is also an OSError, with the ``errno`` of the failure, for code that catches those.
    """


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically with :func:`torch.save`.

    When the file system refuses the bytes the temporary file is removed, ``path`` is
    left as it was, and :class:`CheckpointWriteError` says why. Temporary files of
    ``path`` left behind by a process killed while writing are removed once a newer
    checkpoint is in place.
    """
    path = Path(path)
    started = time.time()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _checkpoint_write_error(path, exc) from None
    writer = None
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # torch.save reports a failed write as a bare RuntimeError; the OSError behind
        # it is what the user needs to see.
        cause = exc if isinstance(exc, OSError) else getattr(writer, "error", None)
        if cause is not None and isinstance(exc, (OSError, RuntimeError)):
            raise _checkpoint_write_error(path, cause) from None
        raise
    fsync_dir(path.parent)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if stale.stat().st_mtime < started:
                stale.unlink()


class _RecordingWriter:
    """A binary file's ``write``, remembering the OSError it raised."""

    def __init__(self, f) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as exc:
            self.error = exc
            raise


def _checkpoint_write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    kept = "the previous checkpoint is unchanged" if path.exists() else "nothing was written"
    error = CheckpointWriteError(f"cannot write the checkpoint {path}: {reason}; {kept}")
    error.errno = exc.errno
    return error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg.split(". ")[0][:200]


def _unsafe_reason(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = line.strip()
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line.rstrip(".")
    return "it is not made of tensors and plain values only"


def _pickled_code(path: Path) -> str | None:
    """The first global (a function or class, i.e. code) named by the pickle streams
    that make up ``path``, or None when the file is no well-formed pickle or names none.

    Reads opcodes only (:mod:`pickletools`); nothing is unpickled. It tells a crafted
    pickle, which is refused as unsafe, from damaged bytes, which are called corrupt.
    """
    import pickletools

    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            while f.peek(1):  # a legacy file is several pickles in a row
                found = None
                for op, arg, _ in pickletools.genops(f):  # raises on bytes that are no pickle
                    if found is None and op.name in ("GLOBAL", "INST"):
                        found = str(arg).replace(" ", ".")
                    elif found is None and op.name == "STACK_GLOBAL":
                        found = ".".join(strings[-2:]) if len(strings) >= 2 else "a global"
                    elif isinstance(arg, str):
                        strings.append(arg)
                if found is not None:  # in a pickle read whole, up to its STOP
                    return found
    except Exception:  # noqa: BLE001 - not a pickle stream: damaged bytes
        return None
    return None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or foreign file,
    and :class:`UnsafeCheckpointError` for a pickle that names code to run (which is
    never run). Garbage bytes are called corrupt, not unsafe.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    state = load_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a convzoo checkpoint (expected format {CHECKPOINT_FORMAT})"
        )
    return state


def load_torch_file(path: str | os.PathLike):
    """Whatever a :func:`torch.save` file holds, read with ``weights_only=True`` onto the
    CPU (a convzoo checkpoint, or another library's state dict).

    The same refusals as :func:`load_checkpoint`: missing, truncated or corrupt files
    are a :class:`CheckpointError`, a pickle that names code an
    :class:`UnsafeCheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        with warnings.catch_warnings():
            # a damaged file can look like an unusual pickle protocol; the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler fails in many ways on a damaged file
        text = str(exc)
        code = None
        if "GLOBAL" in text:  # a well-formed checkpoint that needs code to load
            code = _unsafe_reason(exc)
        elif not zipfile.is_zipfile(path):  # a bare or legacy pickle: does it name code?
            code = _pickled_code(path)
        if code is not None:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it needs arbitrary code to load ({code}); "
                "convzoo only loads tensors and plain values"
            ) from None
        if not zipfile.is_zipfile(path):
            detail = "not a PyTorch checkpoint file"
        elif isinstance(exc, pickle.UnpicklingError):
            detail = "its pickled contents are damaged"
        else:
            detail = _first_line(exc)
        raise CheckpointError(f"{path} is truncated or corrupt ({detail})") from None
    return state


def find_checkpoint(target: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint file meant by ``target``: a checkpoint file, a run directory
    (``checkpoints/<which>.pt``, else ``last.pt`` for ``best``) or its ``checkpoints``
    folder. :class:`CheckpointError` when there is nothing to load."""
    target = Path(target)
    if which not in CHECKPOINT_NAMES:
        raise CheckpointError(
            f"unknown checkpoint {which!r}; expected one of {', '.join(CHECKPOINT_NAMES)}"
        )
    if target.is_file():
        return target
    if not target.exists():
        raise CheckpointError(f"{target} does not exist")
    if not target.is_dir():
        raise CheckpointError(f"{target} is neither a checkpoint file nor a run directory")
    names = [which] + (["last"] if which == "best" else [])  # best.pt comes after epoch 1
    for name in names:
        for candidate in (target / CHECKPOINT_DIR / f"{name}.pt", target / f"{name}.pt"):
            if candidate.is_file():
                return candidate
    raise CheckpointError(
        f"{target} is not a run directory (no {CHECKPOINT_DIR}/{which}.pt); "
        "give a run directory written by `convzoo train` or a .pt file"
    )
