"""Run artifacts: how convzoo writes and reads the files of a run, in one place.

- Atomic writes: every file goes to a temporary file in the same folder, is flushed
  and fsync'ed, then renamed over its name, and the folder is fsync'ed: a crash at any
  instant leaves the previous file or the new one, whole.
- Strict JSON: non-finite numbers are written as ``null``, never as ``NaN``.
- Checkpoints: plain dicts written with :func:`torch.save`, read back with
  ``torch.load(weights_only=True)``, so a file that needs code to unpickle is refused.
- ``model.safetensors``: one writer, one reader, one metadata schema
  (:data:`MODEL_META_KEYS`). The reader gives the header (metadata and tensor shapes)
  before any tensor is read, so the model it describes can be checked on the meta
  device before memory is spent on it (see :func:`convzoo.registry.model_from_weights`).
- A run directory: :func:`load_run` reads a finished run; :class:`RunLock` gives it one
  owner at a time; :func:`run_inputs` names the files no output may overwrite.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import glob
import json
import math
import os
import pickle
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError, OutputError

CHECKPOINT_FORMAT = "convzoo-checkpoint/1"
CHECKPOINT_NAMES = ("last", "best", "last.prev")

# The files of a run directory (DESIGN.md).
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".convzoo.lock"

# The metadata of a convzoo safetensors file, stored as JSON under the key "convzoo",
# in this order: what get_model needs, and what inference needs around the model.
MODEL_META_KEYS = (
    "model_name",  # a registered model name
    "model_options",  # get_model keyword arguments: num_classes, in_channels, ...
    "classes",  # class names, in label order
    "mean",  # per-channel normalisation of pixel values in [0, 1]
    "std",
    "image_size",  # [H, W] of the stored images
    "resize",  # the side the images are resized to before the model, or null
    "in_channels",
    "dataset",
    "ema",  # whether the weights are an exponential moving average
)


# -- atomic writes ------------------------------------------------------------------------


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


def _output_error(path: Path, exc: OSError, what: str = "") -> OutputError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    kept = "; the previous version is unchanged" if path.exists() else ""
    error = OutputError(f"cannot write {what}{path}: {reason}{kept}")
    error.errno = exc.errno
    return error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over it when the block succeeds.

    For writers that want a file name (safetensors, ONNX, TorchScript). When the block
    fails the temporary file is removed and ``path`` is left as it was; a refused write
    (full disk, read-only folder) becomes :class:`OutputError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _output_error(path, exc) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _output_error(path, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``value``: NaN and infinities become ``null``."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as strict, indented JSON, atomically."""
    atomic_write_text(path, to_json(value) + "\n")


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` a whole copy of ``src``, atomically (a hard link when possible).

    A hard link costs no bytes: files are only ever replaced by rename, never written
    in place, so the linked copy keeps its contents when ``src`` is later replaced.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


# -- checkpoints --------------------------------------------------------------------------


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
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a convzoo checkpoint (expected format {CHECKPOINT_FORMAT})"
        )
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


# -- model.safetensors ----------------------------------------------------------------------


def model_meta(**values: Any) -> dict:
    """The safetensors metadata dict, keys in :data:`MODEL_META_KEYS` order.

    ``model_name`` and ``model_options`` are required; the others default to None.
    """
    unknown = set(values) - set(MODEL_META_KEYS)
    if unknown:
        raise ValueError(f"unknown model metadata keys: {sorted(unknown)}")
    for key in ("model_name", "model_options"):
        if key not in values:
            raise ValueError(f"model metadata needs {key!r}")
    return {key: values.get(key) for key in MODEL_META_KEYS}


def write_model_safetensors(
    path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict
) -> Path:
    """Write a model's weights and its :func:`model_meta` to ``path``, atomically.

    Tensors are stored on the CPU and contiguous; tensors that share memory (tied
    weights) are stored once each, as copies (safetensors refuses shared storage).
    """
    meta = model_meta(**meta)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    seen: set[int] = set()
    for k, v in list(tensors.items()):
        ptr = v.data_ptr()
        if ptr in seen and v.numel():
            tensors[k] = v.clone()
        seen.add(ptr)
    from safetensors.torch import save

    data = save(tensors, metadata={"format": "pt", "convzoo": json.dumps(meta)})
    atomic_write_bytes(path, _sorted_metadata(data))
    return Path(path)


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its metadata keys in sorted order.

    safetensors writes its metadata map in an order that changes from one process to
    the next; sorting it makes the same weights give the same bytes (a deterministic run
    gives a file with the same hash every time). Keys and values keep their bytes, so
    the header keeps its length.
    """
    size = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + size]
    meta = json.loads(header).get("__metadata__") or {}

    def encoded(keys) -> bytes:
        obj = {k: meta[k] for k in keys}
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    written, wanted = encoded(meta), encoded(sorted(meta))
    if written == wanted or header.count(written) != 1:
        return data
    return data[:8] + header.replace(written, wanted) + data[8 + size :]


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(convzoo metadata, {tensor name: shape}) of a safetensors file, no tensor read.

    :class:`CheckpointError` when the file is missing, unreadable or has no convzoo
    model description.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            strings = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        meta = json.loads(strings["convzoo"])
    except (KeyError, TypeError, json.JSONDecodeError):
        meta = None
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("model_name"), str)
        or not isinstance(meta.get("model_options"), dict)
    ):
        raise CheckpointError(f"{path} has no convzoo model description in its metadata")
    return meta, shapes


def read_safetensors_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU (check its header first)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


# -- run directories ----------------------------------------------------------------------


# result.json keys a finished run cannot do without.
RESULT_REQUIRED = ("model", "test_accuracy")


@dataclass
class Run:
    """One finished training run, as :func:`load_run` reads it."""

    path: Path
    result: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""  # unique within a report: the model name, or model (folder)

    @property
    def model(self) -> str:
        return str(self.result["model"])

    @property
    def dataset(self) -> str:
        return str(self.result.get("dataset") or self.config.get("dataset") or "?")

    def checkpoint(self, which: str = "last") -> Path:
        return self.path / CHECKPOINT_DIR / f"{which}.pt"

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); is {what} damaged?") from None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a torn last line is skipped."""
    rows: list[dict[str, Any]] = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def load_run(path: str | os.PathLike) -> Run:
    """Read the finished run in ``path``; :class:`ConfigError` when it is not one."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a run directory (it is a file)")
    result_path = path / RESULT_FILE
    if not result_path.is_file():
        partial = (path / CHECKPOINT_DIR).is_dir()
        why = (
            f"its training did not finish; resume it with `convzoo train MODEL --resume {path}`"
            if partial
            else "give directories written by `convzoo train`"
        )
        raise ConfigError(f"{path} is not a finished run (no {RESULT_FILE}); {why}")
    result = _read_json(result_path, "the run")
    if not isinstance(result, dict) or any(k not in result for k in RESULT_REQUIRED):
        raise ConfigError(f"{result_path} is not a convzoo result (no model or test_accuracy)")
    config: dict[str, Any] = {}
    if (path / CONFIG_FILE).is_file():
        loaded = _read_json(path / CONFIG_FILE, "the run")
        config = loaded if isinstance(loaded, dict) else {}
    metrics = read_metrics(path / METRICS_FILE)
    return Run(path=path, result=result, config=config, metrics=metrics, label=str(result["model"]))


def run_inputs(run_dir: str | os.PathLike) -> list[Path]:
    """The files of a run that no output may overwrite: its configuration, metrics,
    result, weights, checkpoints and lock."""
    run_dir = Path(run_dir)
    files = [run_dir / n for n in (CONFIG_FILE, METRICS_FILE, RESULT_FILE, MODEL_FILE, LOCK_FILE)]
    ck = run_dir / CHECKPOINT_DIR
    files += [ck / f"{n}.pt" for n in CHECKPOINT_NAMES]
    return files


def refuse_overwrite(out: str | os.PathLike, run_dirs: list[str | os.PathLike], flag: str) -> None:
    """:class:`ConfigError` when ``out`` is one of the inputs of ``run_dirs`` (or a
    folder's checkpoints folder), naming the ``flag`` to change."""
    target = Path(out).resolve()
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if target == (run_dir / CHECKPOINT_DIR).resolve():
            raise ConfigError(f"{flag} {out} is the checkpoints folder of the run {run_dir}")
        for path in run_inputs(run_dir):
            if target == path.resolve():
                raise ConfigError(
                    f"{flag} {out} would overwrite the run's own {path.relative_to(run_dir)}; "
                    f"choose another {flag}"
                )


class RunLock:
    """An exclusive lock on a run directory, held while one process writes it.

    The lock is ``flock`` on ``<run_dir>/.convzoo.lock``: the kernel releases it when the
    process ends, however it ends, so a killed run never leaves a stale lock. A second
    process gets :class:`ConfigError` at once. Use as a context manager or call
    :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _output_error(self.path, exc, "the lock of ") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno_codes.EWOULDBLOCK, errno_codes.EAGAIN, errno_codes.EACCES):
                raise ConfigError(
                    f"{self.run_dir} is in use by another convzoo process (it holds "
                    f"{self.path}); wait for it to finish or choose another folder"
                ) from None
            raise _output_error(self.path, exc, "the lock of ") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
