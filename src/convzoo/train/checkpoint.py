"""Training checkpoints: written atomically, read without running arbitrary code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (see
``FORMAT`` and the keys below), written with :func:`torch.save` and read back with
``torch.load(weights_only=True)``, so a file that would need arbitrary code to unpickle
is refused instead of executed.

Keys: ``format``, ``model_name``, ``model_options`` (num_classes, in_channels,
small_input, width and family options), ``model`` (state dict), ``ema`` (state dict or
None), ``data`` (dataset, data_dir, classes, mean, std, image_size, resize,
in_channels), ``config`` (the resolved training config), ``optimizer``, ``scheduler``,
``rng``, ``epoch``, ``step``, ``metrics``, ``best_val_accuracy``; training adds a few
of its own (position inside the epoch, partial epoch sums, planned steps).
"""

from __future__ import annotations

import glob
import os
import pickle
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

FORMAT = "convzoo-checkpoint/1"


class UnsafeCheckpointError(CheckpointError):
    """A file that would need arbitrary code to load; it is never unpickled."""


class CheckpointWriteError(CheckpointError, OSError):
    """The file system refused a checkpoint (disk full, file-size limit, permissions).

    It is also an OSError, with the ``errno`` of the failure, for code that catches those.
    """


NAMES = ("last", "best", "last.prev")


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory, which is flushed and
    fsync'ed, then renamed over ``path``, and the directory is fsync'ed: a crash at any
    instant leaves either the previous file or the new one, whole. When the file system
    refuses the bytes (disk full, file-size limit, permissions) the temporary file is
    removed, ``path`` is left as it was, and :class:`CheckpointError` says why.
    Temporary files of ``path`` left behind by a process killed while writing are
    removed once a newer checkpoint is in place.
    """
    path = Path(path)
    started = time.time()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    writer = None
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        # torch.save reports a failed write as a bare RuntimeError; the OSError behind
        # it is what the user needs to see.
        cause = exc if isinstance(exc, OSError) else getattr(writer, "error", None)
        if cause is not None and isinstance(exc, (OSError, RuntimeError)):
            raise _write_error(path, cause) from None
        raise
    fsync_dir(path.parent)
    _remove_stale_temporaries(path, started)


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


def _write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    kept = "the previous checkpoint is unchanged" if path.exists() else "nothing was written"
    error = CheckpointWriteError(f"cannot write the checkpoint {path}: {reason}; {kept}")
    error.errno = exc.errno
    return error


def _remove_stale_temporaries(path: Path, before: float) -> None:
    """Remove ``path``'s temporary files older than ``before`` (left by a killed writer)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if stale.stat().st_mtime < before:
                stale.unlink()
        except OSError:
            pass


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it survives a power cut (POSIX only)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` a whole copy of ``src``, atomically (a hard link when possible).

    A hard link costs no bytes: files are only ever replaced by rename, never written
    in place, so the linked copy keeps its contents when ``src`` is later replaced.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def _unsafe_reason(exc: BaseException) -> str:
    text = str(exc)
    for line in text.splitlines():
        line = line.strip()
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line.rstrip(".")
    return "it is not made of tensors and plain values only"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or foreign file,
    and for one that would need arbitrary code to load (which is never run).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():
            # a damaged file can look like an unusual pickle protocol; the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it needs arbitrary code to load "
                f"({_unsafe_reason(exc)}); convzoo only loads tensors and plain values"
            ) from None
        raise CheckpointError(f"{path} is corrupt: {_first_line(exc)}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(exc)})") from None
    except Exception as exc:  # any other failure of the unpickler on a damaged file
        raise CheckpointError(f"{path} cannot be read ({_first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a convzoo checkpoint (expected format {FORMAT})")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg.split(". ")[0][:200]


def find_checkpoint(target: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint file meant by ``target``.

    ``target`` is a checkpoint file, a run directory (-> ``checkpoints/<which>.pt``)
    or a run's ``checkpoints`` directory. Raises :class:`CheckpointError` when there is
    nothing to load.
    """
    target = Path(target)
    if which not in NAMES:
        raise CheckpointError(f"unknown checkpoint {which!r}; expected one of {', '.join(NAMES)}")
    if target.is_file():
        return target
    if not target.exists():
        raise CheckpointError(f"{target} does not exist")
    if not target.is_dir():
        raise CheckpointError(f"{target} is neither a checkpoint file nor a run directory")
    for candidate in (target / "checkpoints" / f"{which}.pt", target / f"{which}.pt"):
        if candidate.is_file():
            return candidate
    # A run interrupted before its first validation has last.pt but no best.pt.
    if which == "best":
        for candidate in (target / "checkpoints" / "last.pt", target / "last.pt"):
            if candidate.is_file():
                return candidate
    raise CheckpointError(
        f"{target} is not a run directory (no checkpoints/{which}.pt); "
        "give a run directory written by `convzoo train` or a .pt file"
    )


def model_from_checkpoint(ckpt: dict, *, use_ema: bool = True) -> nn.Module:
    """Rebuild the checkpoint's model with its weights (EMA ones when present), in eval mode."""
    try:
        name = ckpt["model_name"]
        options = dict(ckpt["model_options"])
        weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint lacks {exc}; it is not a convzoo checkpoint") from None
    return model_from_weights(name, options, weights)


def model_from_weights(name: str, options: dict, weights: dict) -> nn.Module:
    """``get_model(name, **options)`` with ``weights`` loaded, in eval mode.

    ``name`` and ``options`` come from a file, so the model is first built on the meta
    device (shapes only) and checked against ``weights``: options that ask for more
    than the file holds (say, a billion classes) are refused before any memory is
    spent on them. Raises :class:`CheckpointError` (or ModelError) when they do not fit.
    """
    if not isinstance(name, str) or not isinstance(weights, dict):
        raise CheckpointError("the model name or weights are missing; not a convzoo checkpoint")
    check_state_dict(_build(name, options, torch.device("meta")), weights, name)
    model = _build(name, options, None)
    model.load_state_dict(weights)
    model.name = name
    return model.eval()


def _build(name: str, options: dict, device: torch.device | None) -> nn.Module:
    from ..errors import ConvzooError
    from ..registry import get_model

    try:
        if device is None:
            return get_model(name, **options)
        with device:
            return get_model(name, **options)
    except ConvzooError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot rebuild {name} from the options stored with its weights ({exc})"
        ) from None


def check_state_dict(model: nn.Module, weights: dict, name: str) -> None:
    """Raise :class:`CheckpointError` when ``weights`` do not fit ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [
        k
        for k in own
        if k in weights and tuple(own[k].shape) != tuple(getattr(weights[k], "shape", ()))
    ]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(
                f"missing {missing[0]}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            )
        if unexpected:
            detail.append(f"unexpected {unexpected[0]}")
        if wrong:
            k = wrong[0]
            detail.append(
                f"{k} has shape {tuple(weights[k].shape)}, the model wants {tuple(own[k].shape)}"
            )
        raise CheckpointError(f"the weights do not fit {name}: {'; '.join(detail)}")
