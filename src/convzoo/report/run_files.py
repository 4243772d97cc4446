"""The files a finished run gets beside its results: curves, confusion matrix, report."""

from __future__ import annotations

import os
from pathlib import Path


def write_run_files(
    run_dir: str | os.PathLike,
    *,
    metrics: list[dict],
    confusion: list[list[int]] | None,
    classes: list[str],
    model=None,
    dataset=None,
    test_logits=None,
) -> None:
    """Write ``curves.png``, ``confusion.png`` and the one-run ``report.html``, each
    atomically. ``model``, ``dataset`` and ``test_logits`` are what training still has
    in memory (see :func:`convzoo.report.html.write_run_report`)."""
    from .html import write_run_report
    from .plots import plot_confusion, plot_curves

    run_dir = Path(run_dir)
    plot_curves(metrics, run_dir / "curves.png")
    if confusion is not None:
        plot_confusion(confusion, list(classes), run_dir / "confusion.png")
    write_run_report(run_dir, model=model, dataset=dataset, test_logits=test_logits)
