"""A whole training run as ``convzoo train`` makes it: train, then draw and report.

:func:`convzoo.train.train` writes the run's results (config, metrics, checkpoints,
weights, result.json); the plots and the one-run report are written here, after it,
so that the training loop knows nothing of reports.
"""

from __future__ import annotations

import sys

from .train import TrainConfig, TrainResult, train


def train_run(config: TrainConfig, **kwargs) -> TrainResult:
    """:func:`convzoo.train.train` (same arguments), then ``curves.png``,
    ``confusion.png`` and ``report.html`` in the run directory (rank 0). Plots and the
    report are a convenience: a failure there is one warning line, never fatal."""
    out = train(config, **kwargs)
    if out.confusion is None:  # not rank 0 of a distributed run
        return out
    try:
        from .report import write_run_files

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
