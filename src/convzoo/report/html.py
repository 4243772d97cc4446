"""The HTML report of one or more training runs: a single self-contained file.

Contents: the leaderboard; test accuracy against multiply-adds and against training
time; validation accuracy per epoch of every run; per-class test accuracy; for each
model its confusion matrix, per-class accuracy, the test images it got wrong with the
most confidence, and its anatomy; the machine, the versions and the commands.

The file needs nothing else: plots are PNG images embedded as base64 ``data:`` URIs,
the CSS is inline, and there are no scripts, web fonts or links to other files, so it
can be mailed, archived or opened offline. Plots are drawn with matplotlib on the Agg
canvas (see :mod:`convzoo.report.plots`).
"""

from __future__ import annotations

import base64
import html
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .analysis import RunAnalysis, analyse_run
from .leaderboard import (
    COLUMNS,
    Entry,
    format_cell,
    format_markdown,
    human,
    leaderboard,
    machine_description,
    report_date,
    software_versions,
    speed_note,
)
from .runs import Run, load_runs

__all__ = ["CHART_FILES", "Report", "build_report", "collect", "render_html", "write_run_report"]

# The comparison charts, as build_report(charts=...) writes them.
CHART_FILES = ("accuracy-vs-macs.png", "accuracy-vs-time.png", "val-accuracy.png")

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
) -> Report:
    """Analyse every run (see :func:`analysis.analyse_run`) and rank them.

    ``preloaded`` maps a run's label to ``{"model": ..., "dataset": ...,
    "test_logits": (logits, labels)}`` already in memory.
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


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
) -> Report:
    """Write the HTML report of ``run_dirs`` to ``out`` (and the leaderboard to ``markdown``,
    and the comparison charts as PNG files into the folder ``charts``).

    Raises :class:`ConfigError` for a directory that is not a finished run.
    """
    runs = load_runs(list(run_dirs))
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    if out.parent.exists() and not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: {out.parent} is not a directory")
    report = collect(
        runs,
        command=command,
        device=device,
        speed=speed,
        data_dir=data_dir,
        log=log,
        speed_seconds=speed_seconds,
    )
    if markdown is not None:  # first: it needs no plots
        _write_atomic(Path(markdown), report.markdown())
    _write_atomic(out, render_html(report, charts))
    report.path = out
    return report


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
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    _write_atomic(path, render_html(report))
    report.path = path
    return path


# ---------------------------------------------------------------------------------------
# Rendering


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


class _Images:
    """Plots drawn into a temporary folder and read back as ``data:`` URIs; a plot
    given a ``name`` is also copied into ``keep`` (when set) under that name."""

    def __init__(self, folder: Path, keep: Path | None = None) -> None:
        self.folder = folder
        self.keep = keep
        self.count = 0

    def draw(self, fn: Callable, *args, name: str | None = None, **kwargs) -> str:
        self.count += 1
        path = self.folder / f"plot{self.count}.png"
        fn(*args, path=path, **kwargs)
        png = path.read_bytes()
        if self.keep is not None and name is not None:
            self.keep.mkdir(parents=True, exist_ok=True)
            tmp = self.keep / f".{name}.tmp"
            tmp.write_bytes(png)
            os.replace(tmp, self.keep / name)
        return data_uri(png)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(uri: str, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} src="{uri}" alt="{esc(alt)}">'


def _figure(uri: str, alt: str, caption: str = "", cls: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    c = f' class="{cls}"' if cls else ""
    return f"<figure{c}>{_img(uri, alt)}{cap}</figure>"


def _slug(label: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in label.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "model"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def render_html(report: Report, charts: str | os.PathLike | None = None) -> str:
    """The whole report as one HTML document. With ``charts`` (a folder), the
    comparison charts are also written there as PNG files (CHART_FILES)."""
    from . import plots

    labels = [e.label for e in report.entries]
    colors = dict(zip(labels, plots.model_colors(len(labels)), strict=True))
    with tempfile.TemporaryDirectory(prefix="convzoo-report-") as tmp:
        images = _Images(Path(tmp), Path(charts) if charts is not None else None)
        body = [
            _header(report),
            '<main class="wrap">',
            *(f'<p class="warn">{esc(n)}</p>' for n in report.notes),
            _leaderboard_section(report, colors),
            _tradeoff_section(report, colors, images),
            _curves_section(report, colors, images),
            _per_class_section(report),
            _models_section(report, colors, images),
            _environment_section(report),
            "</main>",
            _footer(report),
        ]
    datasets = sorted({r.dataset for r in report.runs})
    title = f"convzoo report: {', '.join(labels)} on {', '.join(datasets)}"
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="convzoo {esc(report.versions.get("convzoo", ""))}">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _header(report: Report) -> str:
    datasets = sorted({r.dataset for r in report.runs})
    n = len(report.runs)
    nav = "".join(
        f'<a href="#{sid}">{name}</a>'
        for sid, name in (
            ("leaderboard", "Leaderboard"),
            ("tradeoffs", "Accuracy and cost"),
            ("curves", "Training"),
            ("per-class", "Per class"),
            ("models", "Models"),
            ("environment", "Machine"),
        )
    )
    return (
        '<header class="top"><div class="wrap">'
        "<h1>convzoo report</h1>"
        f'<p class="sub">{n} model{"s" if n != 1 else ""} on {esc(", ".join(datasets))}'
        f" &middot; {esc(report.date)}</p>"
        f"<nav>{nav}</nav></div></header>"
    )


def _swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{color}"></span>'


def _leaderboard_section(report: Report, colors: dict[str, str]) -> str:
    head = "".join(
        f'<th class="{"name" if attr == "label" else ""}" scope="col">{esc(h)}</th>'
        for attr, h, _ in COLUMNS
    )
    rows = []
    for e in report.entries:
        cells = []
        for attr, _, _ in COLUMNS:
            value = getattr(e, attr)
            if attr == "label":
                cells.append(
                    f'<td class="name" data-key="label">{_swatch(colors[e.label])}'
                    f'<a href="#model-{_slug(e.label)}">{esc(e.label)}</a></td>'
                )
                continue
            raw = "" if value is None else repr(value)
            title = ""
            if attr in ("params", "macs") and value is not None:
                title = f' title="{value:,}"'
            elif attr == "wall_seconds" and e.train_seconds is not None:
                title = (
                    f' title="{format_cell("train_seconds", e.train_seconds)} of optimizer steps"'
                )
            cells.append(
                f'<td data-key="{attr}" data-value="{esc(raw)}"{title}>'
                f"{esc(format_cell(attr, value))}</td>"
            )
        cls = ' class="first"' if e.rank == 1 and len(report.entries) > 1 else ""
        rows.append(f'<tr{cls} data-run="{esc(e.label)}">{"".join(cells)}</tr>')
    speed = esc(speed_note(report.entries))
    if any(e.images_per_second is not None for e in report.entries):
        t = report.threads
        speed += f", measured on this machine with {t} thread{'s' if t != 1 else ''}"
    note = (
        "Sorted by test accuracy. Training time is each run's wall time from result.json "
        f"(hover for the time spent in optimizer steps). {speed}. Multiply-adds are per "
        "image at the run's input size."
    )
    return (
        '<section id="leaderboard"><h2>Leaderboard</h2>'
        '<div class="table-scroll"><table class="board">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        f'<p class="note">{note}</p></section>'
    )


def stored_plot(run: Run, name: str) -> bytes | None:
    """The run's own ``name`` (curves.png, confusion.png) if drawn at the end of training.

    A time-budgeted run draws placeholder plots early on to time them; a plot older than
    model.safetensors (written just before the final plots) is not the final one.
    """
    path, weights = run.path / name, run.path / "model.safetensors"
    try:
        if path.stat().st_mtime_ns < weights.stat().st_mtime_ns:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _tradeoff_section(report: Report, colors: dict[str, str], images: _Images) -> str:
    from . import plots

    if len(report.entries) < 2:
        return (
            '<section id="tradeoffs"><h2>Accuracy and cost</h2><p class="note">One run: '
            "nothing to set it against. With several runs (<code>convzoo report RUN_DIR "
            "RUN_DIR ...</code> or <code>convzoo compare</code>) this section plots test "
            "accuracy against multiply-adds and against training time.</p></section>"
        )

    def duration(v: float) -> str:
        if v < 60:
            return f"{v:.2g}s" if v < 1 else f"{v:g}s"
        return f"{v / 60:g}m" if v < 3600 else f"{v / 3600:g}h"

    def compact(v: float) -> str:
        return human(v).replace(".00", "")

    entries = report.entries
    cols = [colors[e.label] for e in entries]
    nice_counts = [m * 10**p for p in range(0, 15) for m in (1, 2, 5)]
    nice_times = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200]
    nice_times += [h * 3600 for h in (4, 8, 12, 24, 48, 96)]
    macs = images.draw(
        plots.plot_tradeoff,
        [(e.label, e.macs, e.test_accuracy) for e in entries],
        xlabel="multiply-adds per image (log scale)",
        title="Test accuracy against multiply-adds",
        colors=cols,
        xformat=compact,
        xticks=nice_counts,
        name=CHART_FILES[0],
    )
    time_ = images.draw(
        plots.plot_tradeoff,
        [(e.label, e.wall_seconds, e.test_accuracy) for e in entries],
        xlabel="training wall time (log scale)",
        title="Test accuracy against training time",
        colors=cols,
        xformat=duration,
        xticks=nice_times,
        name=CHART_FILES[1],
    )
    return (
        '<section id="tradeoffs"><h2>Accuracy and cost</h2><div class="grid2">'
        + _figure(
            macs,
            "Test accuracy against multiply-adds, one point per model",
            "Up and to the left is better: more accuracy for less computation per image.",
        )
        + _figure(
            time_,
            "Test accuracy against training time, one point per model",
            "Training wall time of each run on the machine it was trained on.",
        )
        + "</div></section>"
    )


def _curves_section(report: Report, colors: dict[str, str], images: _Images) -> str:
    from . import plots

    if len(report.entries) == 1:
        stored = stored_plot(report.runs[0], "curves.png")
        if stored is not None:
            return (
                '<section id="curves"><h2>Training curves</h2>'
                + _figure(
                    data_uri(stored),
                    "Loss and accuracy per epoch, training and validation",
                    "Loss and accuracy after every epoch, on the training batches and on the "
                    "validation split carved from the training set (the run's curves.png).",
                    "wide",
                )
                + "</section>"
            )
    series = [(e.label, report.run(e.label).metrics) for e in report.entries]
    uri = images.draw(
        plots.plot_val_accuracy,
        series,
        colors=[colors[e.label] for e in report.entries],
        name=CHART_FILES[2],
    )
    return (
        '<section id="curves"><h2>Validation accuracy per epoch</h2>'
        + _figure(
            uri,
            "Validation accuracy per epoch, all models on one chart",
            "Measured after every epoch on the validation split carved from the training set.",
            "wide",
        )
        + "</section>"
    )


def _per_class(report: Report, label: str) -> tuple[list[str] | None, list[float | None] | None]:
    a = report.analyses[label]
    per_class = a.per_class_accuracy
    if per_class is None:
        recorded = report.run(label).result.get("test_per_class_accuracy")
        per_class = list(recorded) if isinstance(recorded, list) else None
    classes = a.classes
    if per_class is not None and (classes is None or len(classes) != len(per_class)):
        classes = [f"class {i}" for i in range(len(per_class))]
    return classes, per_class


def _shade(value: float | None, lo: float, hi: float) -> str:
    if value is None:
        return ""
    t = 1.0 if hi - lo < 1e-9 else (value - lo) / (hi - lo)
    return f' style="background:hsl({round(10 + 110 * t)},62%,90%)"'


def _per_class_section(report: Report) -> str:
    table = {e.label: _per_class(report, e.label) for e in report.entries}
    usable = [(lbl, c, p) for lbl, (c, p) in table.items() if p is not None]
    if not usable:
        body = '<p class="note">No per-class figures: the test set could not be evaluated.</p>'
    elif len({tuple(c) for _, c, _ in usable}) > 1:
        body = '<p class="note">The runs have different classes; see each model below.</p>'
    else:
        classes = usable[0][1]
        values = [v for _, _, p in usable for v in p if v is not None]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        head = '<th class="name" scope="col">class</th>' + "".join(
            f'<th scope="col">{esc(lbl)}</th>' for lbl, _, _ in usable
        )
        rows = []
        for k, name in enumerate(classes):
            cells = "".join(
                f'<td data-value="{"" if p[k] is None else repr(p[k])}"{_shade(p[k], lo, hi)}>'
                f"{_pct(p[k])}</td>"
                for _, _, p in usable
            )
            rows.append(f'<tr><td class="name">{esc(name)}</td>{cells}</tr>')
        body = (
            '<div class="table-scroll"><table class="perclass">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            '<p class="note">The fraction of each class\'s test images that each model got '
            "right; colour runs from the lowest figure in the table (red) to the highest "
            "(green).</p>"
        )
    return f'<section id="per-class"><h2>Per-class test accuracy</h2>{body}</section>'


def _models_section(report: Report, colors: dict[str, str], images: _Images) -> str:
    parts = ['<section id="models"><h2>Models</h2>']
    for e in report.entries:
        parts.append(_model_article(report, e, colors[e.label], images))
    parts.append("</section>")
    return "".join(parts)


def _model_article(report: Report, e: Entry, color: str, images: _Images) -> str:
    from . import plots

    run = report.run(e.label)
    a = report.analyses[e.label]
    r = run.result
    facts = [
        f"test accuracy <b>{_pct(e.test_accuracy)}</b>",
        f"best validation accuracy {_pct(e.best_val_accuracy)}",
        f"{esc(format_cell('params', e.params))} parameters",
        f"{esc(format_cell('macs', e.macs))} multiply-adds",
        f"{esc(format_cell('epochs', e.epochs))} epoch{'' if e.epochs == 1 else 's'} in "
        f"{esc(format_cell('wall_seconds', e.wall_seconds))}",
    ]
    form = "small-input form" if r.get("small_input") else "faithful form"
    size = "x".join(str(s) for s in r.get("input_size") or [])
    width = r.get("width")
    detail = f"{form}, input {size}" + (f", width {width:g}" if isinstance(width, float) else "")
    out = [
        f'<article class="model" id="model-{_slug(e.label)}">',
        f"<h3>{_swatch(color)}{e.rank}. {esc(e.label)}</h3>",
        f'<p class="facts">{" &middot; ".join(facts)}</p>',
        f'<p class="note">{esc(detail)}; run directory <code>{esc(run.path)}</code>'
        + (f"; weights from <code>{esc(a.weights)}</code>" if a.weights else "")
        + "</p>",
    ]
    # Confusion matrix and per-class accuracy side by side
    classes, per_class = _per_class(report, e.label)
    stored = stored_plot(run, "confusion.png") if report.reuse_plots else None
    if stored is not None and a.confusion is not None:
        left = _figure(
            data_uri(stored), f"Confusion matrix of {e.label} on the test set", cls="confusion"
        )
    elif a.confusion is not None and a.classes is not None:
        uri = images.draw(plots.plot_confusion, a.confusion, a.classes)
        left = _figure(uri, f"Confusion matrix of {e.label} on the test set", cls="confusion")
    elif (run.path / "confusion.png").is_file():
        uri = data_uri((run.path / "confusion.png").read_bytes())
        left = _figure(
            uri,
            f"Confusion matrix of {e.label} on the test set",
            "As drawn at the end of training (confusion.png).",
            cls="confusion",
        )
    else:
        left = '<p class="note">No confusion matrix: the test set could not be evaluated.</p>'
    if per_class is not None and classes is not None:
        rows = "".join(
            f'<tr><td class="name">{esc(name)}</td>'
            f'<td class="barcell"><div class="bar"><span style="width:{(v or 0) * 100:.1f}%;'
            f'background:{color}"></span></div></td><td>{_pct(v)}</td></tr>'
            for name, v in zip(classes, per_class, strict=True)
        )
        right = (
            '<div class="classacc"><h4>Per-class accuracy</h4>'
            f'<table class="classes"><tbody>{rows}</tbody></table></div>'
        )
    else:
        right = '<p class="note">No per-class figures.</p>'
    out.append(f'<div class="grid2 pair">{left}{right}</div>')
    # Mistakes
    out.append("<h4>Most confidently misclassified test images</h4>")
    if a.mistakes and a.classes:
        titles = [
            f"true: {a.classes[m.true]}\npred: {a.classes[m.predicted]} ({m.confidence:.0%})"
            for m in a.mistakes
        ]
        uri = images.draw(plots.plot_mistakes, [m.image for m in a.mistakes], titles)
        n_wrong = (
            sum(sum(row) - row[i] for i, row in enumerate(a.confusion)) if a.confusion else None
        )
        caption = (
            f"The {len(a.mistakes)} test images (of {n_wrong:,} misclassified) that {esc(e.label)} "
            "got wrong with the highest confidence (softmax probability of the predicted class)."
        )
        out.append(
            _figure(
                uri,
                f"Most confidently misclassified test images of {e.label}",
                caption,
                "wide mistakes",
            )
        )
    elif a.confusion is not None:
        out.append('<p class="note">No misclassified test images.</p>')
    else:
        out.append('<p class="note">Not available: the test set could not be evaluated.</p>')
    # Anatomy
    out.append(_anatomy(a, e.label))
    if run.config:
        out.append(
            '<details class="config"><summary>Training configuration (config.json)</summary>'
            f"<pre>{esc(json.dumps(run.config, indent=2))}</pre></details>"
        )
    for note in a.notes:
        out.append(f'<p class="warn">{esc(note)}</p>')
    out.append("</article>")
    return "".join(out)


def _anatomy(a: RunAnalysis, label: str) -> str:
    s = a.summary
    if s is None:
        return (
            '<details class="anatomy"><summary>Anatomy</summary>'
            '<p class="note">Not available: the model could not be loaded.</p></details>'
        )
    rows = "".join(
        f'<tr><td class="name"><code>{esc(row.name)}</code></td><td class="name">{esc(row.kind)}</td>'
        f"<td>{esc('x'.join(map(str, row.output_shape)))}</td><td>{row.params:,}</td>"
        f'<td title="{row.macs:,}">{esc(human(row.macs))}</td></tr>'
        for row in s.rows
    )
    size = "x".join(map(str, s.input_size))
    return (
        '<details class="anatomy">'
        f"<summary>Anatomy of {esc(label)}: {len(s.rows)} blocks, {human(s.total_params)} "
        f"parameters, {human(s.total_macs)} multiply-adds for a {size} input</summary>"
        '<div class="table-scroll"><table class="anatomy-table"><thead><tr>'
        '<th class="name">block</th><th class="name">type</th><th>output shape</th>'
        "<th>params</th><th>mult-adds</th></tr></thead>"
        f"<tbody>{rows}</tbody><tfoot><tr>"
        f'<td class="name" colspan="3">total</td><td>{s.total_params:,}</td>'
        f'<td title="{s.total_macs:,}">{esc(human(s.total_macs))}</td></tr></tfoot></table></div>'
        '<p class="note">One row per block (the output of <code>convzoo summary</code>); '
        "multiply-adds count convolutions and fully connected layers for one image.</p>"
        "</details>"
    )


def _environment_section(report: Report) -> str:
    v = report.versions
    versions = ", ".join(f"{k} {esc(val)}" for k, val in v.items() if k != "platform")
    this = (
        '<h3>This report</h3><table class="kv"><tbody>'
        f'<tr><th scope="row">made</th><td>{esc(report.date)}</td></tr>'
        f'<tr><th scope="row">command</th><td><code>{esc(report.command)}</code></td></tr>'
        f'<tr><th scope="row">machine</th><td>{esc(report.machine)}</td></tr>'
        f'<tr><th scope="row">platform</th><td>{esc(v.get("platform", ""))}</td></tr>'
        f'<tr><th scope="row">versions</th><td>{versions}</td></tr>'
        "</tbody></table>"
    )
    head = "".join(
        f'<th class="name" scope="col">{h}</th>'
        for h in ("model", "trained", "device", "threads", "torch", "convzoo", "seed", "recipe")
    )
    rows, commands = [], []
    for e in report.entries:
        r = report.run(e.label).result
        cells = [
            e.label,
            r.get("date", "—"),
            r.get("device", "—"),
            r.get("threads", "—"),
            r.get("torch_version", "—"),
            r.get("convzoo_version", "—"),
            r.get("seed", "—"),
            r.get("recipe") or "none",
        ]
        rows.append("<tr>" + "".join(f'<td class="name">{esc(c)}</td>' for c in cells) + "</tr>")
        cmd = r.get("command") or report.run(e.label).config.get("command") or "—"
        commands.append(f"<dt>{esc(e.label)}</dt><dd><code>{esc(cmd)}</code></dd>")
    runs = (
        "<h3>The runs</h3>"
        f'<div class="table-scroll"><table class="runs"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        f'<h4>Commands</h4><dl class="commands">{"".join(commands)}</dl>'
    )
    return (
        f'<section id="environment"><h2>Machine, versions and commands</h2>{this}{runs}</section>'
    )


def _footer(report: Report) -> str:
    return (
        '<footer class="wrap"><p class="note">Made by convzoo '
        f"{esc(report.versions.get('convzoo', ''))}. Self-contained: the images are embedded "
        "and nothing is loaded from elsewhere.</p></footer>"
    )


CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d8dee4;--bg:#f5f7f9;--card:#fff;--accent:#0969da}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",
"Liberation Sans",sans-serif}
.wrap{max-width:1120px;margin:0 auto;padding:0 24px}
header.top{background:#0d1117;color:#f0f6fc;padding:28px 0 16px}
header.top h1{margin:0;font-size:26px;font-weight:650;letter-spacing:-.01em}
header.top .sub{margin:4px 0 14px;color:#9198a1}
header.top nav a{color:#9ecbff;margin-right:18px;text-decoration:none;font-size:14px}
header.top nav a:hover{text-decoration:underline}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:22px 26px;margin:22px 0;box-shadow:0 1px 2px rgba(31,35,40,.04)}
h2{font-size:20px;margin:0 0 14px;letter-spacing:-.005em}
h3{font-size:17px;margin:0 0 6px}
section>h3{margin:22px 0 8px}
section>h3:first-of-type{margin-top:0}
h4{font-size:14px;margin:18px 0 8px;color:#3d444d}
a{color:var(--accent)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:7px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
thead th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);
font-weight:600;background:#f6f8fa;border-bottom:2px solid var(--line)}
.name{text-align:left}
table.board tbody tr:nth-child(even),table.anatomy-table tbody tr:nth-child(even){background:#fafbfc}
table.board tbody tr:hover{background:#eef4ff}
table.board td{font-size:15px}
table.board tr.first td{font-weight:650}
table.board a{color:inherit;text-decoration:none}
table.board a:hover{text-decoration:underline}
table.perclass td{font-size:14px}
tfoot td{font-weight:600;border-top:2px solid var(--line)}
.table-scroll{overflow-x:auto}
.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:8px;
vertical-align:baseline}
figure{margin:0}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{font-size:13px;color:var(--muted);margin-top:6px;text-align:center}
figure.confusion img{max-width:580px;width:100%}
figure.wide img{width:100%}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(400px,1fr));gap:22px;align-items:start}
.grid2.pair{grid-template-columns:minmax(0,1.35fr) minmax(0,1fr);align-items:center}
@media (max-width:800px){.grid2.pair{grid-template-columns:1fr}}
article.model{border-top:1px solid var(--line);padding-top:20px;margin-top:22px}
article.model:first-of-type{border-top:0;margin-top:0;padding-top:0}
.facts{margin:0 0 2px}
table.classes td{border-bottom:1px solid #eef1f4;padding:4px 8px;font-size:14px}
td.barcell{width:45%}
.bar{background:#e9edf1;border-radius:3px;height:10px;width:100%;min-width:80px}
.bar>span{display:block;height:100%;border-radius:3px}
details{border:1px solid var(--line);border-radius:8px;padding:8px 14px;margin-top:14px;background:#fcfdfd}
details[open]{padding-bottom:12px}
summary{cursor:pointer;font-weight:600;font-size:14px}
details table{margin-top:8px}
details td,details th{font-size:13px;padding:4px 10px}
pre{background:#f6f8fa;padding:10px 12px;border-radius:6px;overflow-x:auto;font-size:12.5px;line-height:1.45}
code,pre{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,"Liberation Mono",monospace}
code{font-size:.88em}
table.kv th{text-align:left;width:110px;color:var(--muted);font-weight:600;font-size:13px;
vertical-align:top;background:none;text-transform:none;letter-spacing:0}
table.kv td{text-align:left;white-space:normal}
dl.commands dt{font-weight:600;margin-top:8px}
dl.commands dd{margin:2px 0 0;overflow-wrap:anywhere}
.note{color:var(--muted);font-size:13px}
.warn{background:#fff8c5;border:1px solid rgba(212,167,44,.4);border-radius:6px;padding:8px 12px;font-size:14px}
footer{padding:4px 24px 40px}
"""
