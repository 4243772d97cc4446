"""A whole training run as ``convzoo train`` makes it: train, then draw and report.

:func:`convzoo.train.train` writes the run's results (config, metrics, checkpoints,
weights, result.json); the plots and the one-run report are written here, after it,
so that the training loop knows nothing of reports.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .train import TrainConfig, TrainingInterrupted, TrainResult, train


class _Stop(BaseException):
    """A stop signal, raised where the plots and report were being written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals(run_dir: Path) -> Iterator[None]:
    """SIGINT and SIGTERM stop the block with :class:`TrainingInterrupted` (exit
    128+signum): the run is complete by then, and only its plots and report are left."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        raise _Stop(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Stop as exc:
        name = signal.Signals(exc.signum).name
        raise TrainingInterrupted(
            f"{name} received while writing the plots and report; the run itself is "
            f"complete (result.json, model.safetensors); `convzoo report {run_dir}` writes "
            "the report",
            exc.signum,
            run_dir,
        ) from None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def train_run(config: TrainConfig, **kwargs) -> TrainResult:
    """:func:`convzoo.train.train` (same arguments), then ``curves.png``,
    ``confusion.png`` and ``report.html`` in the run directory (rank 0). Plots and the
    report are a convenience: a failure there is one warning line, never fatal; a stop
    signal there stops the command (:class:`TrainingInterrupted`), the run kept."""
    out = train(config, **kwargs)
    if out.confusion is None:  # not rank 0 of a distributed run
        return out
    from .report import write_run_files

    with _stop_on_signals(out.run_dir):
        try:
            write_run_files(
                out.run_dir,
                metrics=out.metrics,
                confusion=out.confusion,
                classes=out.classes,
                model=out.model,
                dataset=out.dataset,
                test_logits=out.test_logits,
            )
        except Exception as exc:  # noqa: BLE001 - plots and report never fail a finished run
            print(f"warning: plots and report not written: {exc}", file=sys.stderr, flush=True)
    return out
