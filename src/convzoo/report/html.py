"""The HTML report of one or more training runs: a single self-contained file.

Contents: the leaderboard; test accuracy against multiply-adds and against training
time; validation accuracy per epoch of every run; per-class test accuracy; for each
model its confusion matrix, per-class accuracy, the test images it got wrong with the
most confidence, and its anatomy; the machine, the versions and the commands.

The file needs nothing else: plots are PNG images embedded as base64 ``data:`` URIs,
the CSS is inline, and there are no scripts, web fonts or links to other files, so it
can be mailed, archived or opened offline. Plots are drawn with matplotlib on the Agg
canvas, into memory (see :mod:`convzoo.report.plots`).

The page is data plus a template: :func:`convzoo.report.view.page_view` computes what
it shows, and the Jinja2 template ``templates/report.html.j2`` (package data, with
``templates/report.css``) lays it out with autoescape on, so no text reaches the page
unescaped.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_bytes, atomic_write_text, refuse_overwrite
from ..errors import ConfigError, ConvzooError
from ..units import human
from .analysis import Optimizer, RunAnalysis, analyse_run
from .leaderboard import (
    Entry,
    format_markdown,
    leaderboard,
    machine_description,
    report_date,
    software_versions,
)
from .runs import Run, load_runs
from .view import CHART_FILES, SideBySide, data_uri, page_view, stored_plot

__all__ = [
    "CHART_FILES",
    "Report",
    "build_report",
    "collect",
    "data_uri",
    "render_html",
    "stored_plot",
    "write_run_report",
]

MISTAKES = 16


@dataclass
class Report:
    """Everything a report shows, gathered once; rendered as HTML and as Markdown."""

    runs: list[Run]
    analyses: dict[str, RunAnalysis]
    entries: list[Entry]
    command: str
    date: str
    machine: str
    versions: dict[str, str]
    threads: int
    notes: list[str] = field(default_factory=list)
    path: Path | None = None  # where the HTML was written
    reuse_plots: bool = False  # embed the run's own confusion.png (same model, same data)
    explained: SideBySide | None = None  # the same test images explained by each model

    def run(self, label: str) -> Run:
        return next(r for r in self.runs if r.label == label)

    def markdown(self) -> str:
        return format_markdown(
            self.entries,
            command=self.command,
            date=self.date,
            machine=self.machine,
            datasets=[r.dataset for r in self.runs],
            threads=self.threads,
        )


def current_command() -> str:
    """The command line of this process as `convzoo ...` (or python's argv otherwise)."""
    argv = sys.argv[1:]
    return shlex.join(["convzoo", *argv])


def collect(
    runs: list[Run],
    *,
    command: str | None = None,
    device: str = "cpu",
    speed: bool = True,
    data_dir: str | None = None,
    preloaded: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
    speed_seconds: float = 1.0,
    optimize: Optimizer | None = None,
) -> Report:
    """Analyse every run (see :func:`analysis.analyse_run`) and rank them.

    ``preloaded`` maps a run's label to ``{"model": ..., "dataset": ...,
    "test_logits": (logits, labels)}`` already in memory. ``optimize`` (such as
    :func:`convzoo.infer.optimize`) prepares each model for the speed measurement;
    without it the eager model is timed.
    """
    import torch

    preloaded = preloaded or {}
    cache: dict = {}
    analyses: dict[str, RunAnalysis] = {}
    for i, run in enumerate(runs, start=1):
        if log:
            log(f"[{i}/{len(runs)}] analysing {run.label} ({run.path})")
        given = preloaded.get(run.label, {})
        try:
            analyses[run.label] = analyse_run(
                run,
                model=given.get("model"),
                dataset=given.get("dataset"),
                device=device,
                speed=speed,
                mistakes=MISTAKES,
                data_dir=data_dir,
                data_cache=cache,
                speed_seconds=speed_seconds,
                test_logits=given.get("test_logits"),
                optimize=optimize,
            )
        except Exception as exc:  # noqa: BLE001 - one broken run must not sink the report
            analyses[run.label] = RunAnalysis(
                notes=[f"the model could not be analysed: {type(exc).__name__}: {exc}"]
            )
    entries = leaderboard(runs, {k: a.speed for k, a in analyses.items()})
    notes = []
    datasets = sorted({r.dataset for r in runs})
    if len(datasets) > 1:
        notes.append(
            "These runs are on different datasets ("
            + ", ".join(datasets)
            + "): their accuracies are not comparable."
        )
    return Report(
        runs=runs,
        analyses=analyses,
        entries=entries,
        command=command or current_command(),
        date=report_date(),
        machine=machine_description(device),
        versions=software_versions(),
        threads=torch.get_num_threads(),
        notes=notes,
    )


def build_report(
    run_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    markdown: str | os.PathLike | None = None,
    command: str | None = None,
    device: str = "cpu",
    speed: bool = True,
    data_dir: str | None = None,
    log: Callable[[str], None] | None = None,
    speed_seconds: float = 1.0,
    charts: str | os.PathLike | None = None,
    optimize: Optimizer | None = None,
    explained: SideBySide | None = None,
) -> Report:
    """Write the HTML report of ``run_dirs`` to ``out`` (and the leaderboard to ``markdown``,
    and the comparison charts as PNG files into the folder ``charts``). ``explained``
    adds the section of the same test images explained by each model.

    Raises :class:`ConfigError` for a directory that is not a finished run, and for an
    ``out`` that is one of the runs' own files (``--out`` in the message).
    """
    runs = load_runs(list(run_dirs))
    out = output_path(out, [r.path for r in runs])
    report = collect(
        runs,
        command=command,
        device=device,
        speed=speed,
        data_dir=data_dir,
        log=log,
        speed_seconds=speed_seconds,
        optimize=optimize,
    )
    report.explained = explained
    if markdown is not None:  # first: it needs no plots
        atomic_write_text(markdown, report.markdown())
    atomic_write_text(out, render_html(report, charts))
    report.path = out
    return report


def output_path(out: str | os.PathLike, run_dirs: list[str | os.PathLike]) -> Path:
    """Where the report goes: ``out``, or ``out/report.html`` for a folder.

    :class:`ConfigError` when that is one of the runs' own files (config, metrics,
    result, weights, checkpoints, lock; see :func:`convzoo.artifacts.run_inputs`) or
    when ``out``'s parent is a file.
    """
    refuse_overwrite(out, run_dirs, "--out")
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
        refuse_overwrite(out, run_dirs, "--out")
    if out.parent.exists() and not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: {out.parent} is not a directory")
    return out


def write_run_report(
    run_dir: str | os.PathLike,
    *,
    model=None,
    dataset=None,
    out: str | os.PathLike | None = None,
    speed: bool = False,
    test_logits=None,
) -> Path:
    """The one-run report ``run_dir/report.html``, as ``convzoo train`` writes it.

    ``model`` and ``dataset`` are the final model and the data still in memory at the end
    of training (loaded from the run directory when not given), ``test_logits`` the
    model's (logits, labels) on the whole test set if already computed (saves a pass
    over the test set). The inference speed is
    left out by default, to add little to the run's time: ``convzoo report RUN_DIR``
    measures it.
    """
    runs = load_runs([run_dir])
    path = output_path(out if out is not None else Path(run_dir) / "report.html", [run_dir])
    label = runs[0].label
    preloaded = (
        {label: {"model": model, "dataset": dataset, "test_logits": test_logits}}
        if model is not None
        else None
    )
    result_command = runs[0].result.get("command")
    report = collect(
        runs,
        command=result_command or current_command(),
        device=str(next(model.parameters()).device) if model is not None else "cpu",
        speed=speed,
        preloaded=preloaded,
    )
    report.reuse_plots = model is not None
    if not speed:
        report.notes.append(
            f"Inference speed is not measured at the end of training; `convzoo report {run_dir}` "
            "measures it."
        )
    atomic_write_text(path, render_html(report))
    report.path = path
    return path


# ---------------------------------------------------------------------------------------
# Rendering


@functools.cache
def template_environment():
    """The Jinja2 environment of the report templates (package data), autoescape on."""
    try:
        import jinja2
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConvzooError("the HTML report needs jinja2: pip install jinja2") from None
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("convzoo.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["human"] = human
    env.filters["thousands"] = lambda n: f"{n:,}"
    return env


def render_html(report: Report, charts: str | os.PathLike | None = None) -> str:
    """The whole report as one HTML document. With ``charts`` (a folder), the
    comparison charts are also written there as PNG files (CHART_FILES)."""
    from markupsafe import Markup

    page, drawn = page_view(report)
    if charts is not None:
        for name, png in drawn.items():
            atomic_write_bytes(Path(charts) / name, png)
    env = template_environment()
    css, _, _ = env.loader.get_source(env, "report.css")
    return env.get_template("report.html.j2").render(page=page, css=Markup(css))
