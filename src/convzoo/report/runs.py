"""Finished run directories, as ``convzoo train`` writes them, read back for reports.

A run directory is usable here when it holds ``result.json`` (written last, once the
test set has been evaluated); ``config.json`` and ``metrics.jsonl`` are read when
present. Anything else (checkpoints, the dataset) is only needed by the parts of the
report that run the model, which say so when it is missing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["Run", "load_run", "load_runs"]

# result.json keys a report cannot do without.
REQUIRED = ("model", "test_accuracy")


@dataclass
class Run:
    """One finished training run."""

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


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); is {what} damaged?") from None


def load_run(path: str | os.PathLike) -> Run:
    """Read the finished run in ``path``; :class:`ConfigError` when it is not one."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a run directory (it is a file)")
    result_path = path / "result.json"
    if not result_path.is_file():
        partial = (path / "checkpoints").is_dir()
        why = (
            f"its training did not finish; resume it with `convzoo train MODEL --resume {path}`"
            if partial
            else "give directories written by `convzoo train`"
        )
        raise ConfigError(f"{path} is not a finished run (no result.json); {why}")
    result = _read_json(result_path, "the run")
    if not isinstance(result, dict) or any(k not in result for k in REQUIRED):
        raise ConfigError(f"{result_path} is not a convzoo result (no model or test_accuracy)")
    config: dict[str, Any] = {}
    config_path = path / "config.json"
    if config_path.is_file():
        loaded = _read_json(config_path, "the run")
        config = loaded if isinstance(loaded, dict) else {}
    metrics: list[dict[str, Any]] = []
    metrics_path = path / "metrics.jsonl"
    if metrics_path.is_file():
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line: the rows before it still count
            if isinstance(row, dict):
                metrics.append(row)
    return Run(path=path, result=result, config=config, metrics=metrics, label=str(result["model"]))


def load_runs(paths: list[str | os.PathLike]) -> list[Run]:
    """Read several runs and give each a unique label.

    The label is the model name; runs of the same model are told apart by their
    folder name (``resnet18 (run-a)``). The same folder given twice is read once.
    """
    if not paths:
        raise ConfigError("no run directories given")
    runs: list[Run] = []
    seen: set[Path] = set()
    for p in paths:
        run = load_run(p)
        key = run.path.resolve()
        if key in seen:
            continue
        seen.add(key)
        runs.append(run)
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.model] = counts.get(run.model, 0) + 1
    used: set[str] = set()
    for run in runs:
        label = run.model
        if counts[run.model] > 1:
            label = f"{run.model} ({run.path.resolve().name})"
        base, i = label, 1
        while label in used:
            i += 1
            label = f"{base} #{i}"
        used.add(label)
        run.label = label
    return runs
