"""Run directories: the files of a run, reading a finished one, one owner at a time."""

from __future__ import annotations

import errno as errno_codes
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .checkpoints import CHECKPOINT_DIR, CHECKPOINT_NAMES
from .files import _output_error

# The files of a run directory (DESIGN.md).
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
MODEL_FILE = "model.safetensors"
LOCK_FILE = ".convzoo.lock"

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
