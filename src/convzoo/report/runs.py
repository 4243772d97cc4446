"""Finished run directories read back for a report, each with a label of its own.

Reading a run is :func:`convzoo.artifacts.load_run` (re-exported here with its
:class:`~convzoo.artifacts.Run`); what a report adds is a label that tells apart two
runs of the same model.
"""

from __future__ import annotations

import os

from ..artifacts import Run, load_run
from ..errors import ConfigError

__all__ = ["Run", "label_runs", "load_run", "load_runs"]


def label_runs(runs: list[Run]) -> list[Run]:
    """Give each run a unique label, in place: the model name, or ``model (folder)``
    for runs of the same model (``resnet18 (run-a)``), then ``#2``, ``#3`` if needed."""
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


def load_runs(paths: list[str | os.PathLike]) -> list[Run]:
    """Read several finished runs (the same folder given twice is read once) and label
    them (:func:`label_runs`); :class:`ConfigError` for a folder that is not one."""
    if not paths:
        raise ConfigError("no run directories given")
    runs: list[Run] = []
    seen: set = set()
    for p in paths:
        run = load_run(p)
        key = run.path.resolve()
        if key not in seen:
            seen.add(key)
            runs.append(run)
    return label_runs(runs)
