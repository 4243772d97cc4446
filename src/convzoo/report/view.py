"""The report as data: what the page shows, computed from the runs, with no HTML in it.

:func:`page_view` turns a :class:`~convzoo.report.html.Report` into a :class:`Page` of
plain dataclasses (leaderboard rows, figures as ``data:`` URIs, one :class:`ModelView`
per run, the environment), and the template ``templates/report.html.j2`` lays it out.
Every string here is text: the template escapes it (Jinja2 autoescape), so a class
name, a label or a command line can hold any character.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..units import human
from .analysis import RunAnalysis
from .leaderboard import COLUMNS, Entry, format_cell, speed_note
from .runs import Run

if TYPE_CHECKING:  # pragma: no cover
    from .html import Report

__all__ = [
    "CHART_FILES", "ExplainedCell", "ExplainedImage", "Figure", "ModelView", "Page",
    "SideBySide", "data_uri", "page_view", "stored_plot",
]  # fmt: skip

# The comparison charts, by the names they are written under (build_report(charts=...)).
CHART_FILES = ("accuracy-vs-macs.png", "accuracy-vs-time.png", "val-accuracy.png")

NAV = (
    ("leaderboard", "Leaderboard"),
    ("tradeoffs", "Accuracy and cost"),
    ("curves", "Training"),
    ("per-class", "Per class"),
    ("models", "Models"),
    ("environment", "Machine"),
)
EXPLAINED_NAV = ("explained", "Where they look")


# The side-by-side section's input: plain data that the caller (convzoo.compare) fills
# from its class activation maps; this package draws none of them.
@dataclass
class ExplainedCell:
    """One model on one image: its picture (image | Grad-CAM overlay) and top class."""

    png: bytes | None  # None: this model could not be explained
    predicted: str = ""
    probability: float = 0.0


@dataclass
class ExplainedImage:
    """One test image, with one cell per model (in the order of ``SideBySide.labels``)."""

    name: str  # "test image #i"
    true_class: str
    kind: str  # "right" (most models) or "mistake"
    cells: list[ExplainedCell]


@dataclass
class SideBySide:
    """The same test images explained by each model (rows: images; columns: models)."""

    labels: list[str]  # the models' run labels
    images: list[ExplainedImage]
    layer_note: str = ""  # which layers the maps are taken at
    notes: list[str] = field(default_factory=list)


@dataclass
class Figure:
    """An embedded PNG image with its alternative text and caption."""

    src: str  # a data: URI
    alt: str
    caption: str = ""
    cls: str = ""


@dataclass
class Cell:
    """A table cell: shown ``text``, the exact ``value`` (data-value) and a tooltip."""

    text: str
    value: str = ""
    key: str = ""
    title: str = ""
    style: str = ""


@dataclass
class BoardRow:
    label: str
    anchor: str
    color: str
    first: bool
    cells: list[Cell]  # in COLUMNS order


@dataclass
class PerClass:
    """The classes x models table of per-class test accuracy (or why there is none)."""

    labels: list[str] = field(default_factory=list)
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    missing: str = ""  # the reason there is no table


@dataclass
class Anatomy:
    label: str
    input_size: str
    blocks: int
    params: int
    macs: int
    rows: list[dict[str, Any]]


@dataclass
class ModelView:
    """One run's part of the page."""

    anchor: str
    rank: int
    label: str
    color: str
    test_accuracy: str
    facts: list[str]
    detail: str
    run_dir: str
    weights: str | None
    confusion: Figure | None
    class_bars: list[tuple[str, float, str]] | None  # (class, width %, accuracy text)
    mistakes: Figure | None
    mistakes_note: str
    anatomy: Anatomy | None
    config: str | None  # config.json, indented
    notes: list[str]


@dataclass
class Environment:
    date: str
    command: str
    machine: str
    platform: str
    versions: str
    runs: list[list[str]]  # model, trained, device, threads, torch, convzoo, seed, recipe
    commands: list[tuple[str, str]]


@dataclass
class ExplainedView:
    """The side-by-side grid as the template shows it."""

    labels: list[str]
    rows: list[tuple[str, str, list[tuple[Figure | None, str, bool]]]]
    # (image heading, kind, [(figure, prediction text, right?)] per model)
    note: str
    notes: list[str]


@dataclass
class Page:
    """Everything the template shows."""

    title: str
    version: str
    subtitle: str
    nav: tuple[tuple[str, str], ...]
    notes: list[str]
    board_head: list[tuple[str, bool]]  # (heading, is the name column)
    board: list[BoardRow]
    speed_note: str
    tradeoffs: list[Figure]  # empty for one run
    curves_title: str
    curves: Figure
    per_class: PerClass
    models: list[ModelView]
    environment: Environment
    explained: ExplainedView | None = None


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def slug(label: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in label.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "model"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def stored_plot(run: Run, name: str) -> bytes | None:
    """The run's own ``name`` (curves.png, confusion.png) if drawn at the end of training.

    A time-budgeted run draws placeholder plots early on to time them; a plot older than
    model.safetensors (written just before the final plots) is not the final one.
    """
    path, weights = run.path / name, run.model_file
    try:
        if path.stat().st_mtime_ns < weights.stat().st_mtime_ns:
            return None
        return path.read_bytes()
    except OSError:
        return None


def page_view(report: Report) -> tuple[Page, dict[str, bytes]]:
    """The page of ``report``, and the comparison charts it drew ({CHART_FILES name: PNG})."""
    from . import plots

    labels = [e.label for e in report.entries]
    colors = dict(zip(labels, plots.model_colors(len(labels)), strict=True))
    charts: dict[str, bytes] = {}
    datasets = sorted({r.dataset for r in report.runs})
    n = len(report.runs)
    tradeoffs = _tradeoffs(report, colors, charts)
    curves_title, curves = _curves(report, colors, charts)
    page = Page(
        title=f"convzoo report: {', '.join(labels)} on {', '.join(datasets)}",
        version=report.versions.get("convzoo", ""),
        subtitle=f"{n} model{'s' if n != 1 else ''} on {', '.join(datasets)} · {report.date}",
        nav=NAV if report.explained is None else (*NAV[:-1], EXPLAINED_NAV, NAV[-1]),
        notes=list(report.notes),
        board_head=[(h, attr == "label") for attr, h, _ in COLUMNS],
        board=[_board_row(report, e, colors[e.label]) for e in report.entries],
        speed_note=_speed_note(report),
        tradeoffs=tradeoffs,
        curves_title=curves_title,
        curves=curves,
        per_class=_per_class_table(report),
        models=[_model_view(report, e, colors[e.label], plots) for e in report.entries],
        environment=_environment(report),
        explained=_explained(report.explained),
    )
    return page, charts


def _explained(side: SideBySide | None) -> ExplainedView | None:
    if side is None:
        return None
    rows = []
    for image in side.images:
        cells = []
        for label, cell in zip(side.labels, image.cells, strict=True):
            if cell.png is None:
                cells.append((None, "not explained", False))
                continue
            alt = f"{image.name} and {label}'s class activation map"
            text = f"{cell.predicted} {cell.probability * 100:.1f}%"
            cells.append(
                (Figure(data_uri(cell.png), alt), text, cell.predicted == image.true_class)
            )
        kind = "most models right" if image.kind == "right" else "a confident mistake"
        rows.append((f"{image.name}: {image.true_class}", kind, cells))
    return ExplainedView(list(side.labels), rows, side.layer_note, list(side.notes))


def _board_row(report: Report, e: Entry, color: str) -> BoardRow:
    cells = []
    for attr, _, _ in COLUMNS:
        value = getattr(e, attr)
        if attr == "label":
            cells.append(Cell(text=e.label, key="label"))
            continue
        title = ""
        if attr in ("params", "macs") and value is not None:
            title = f"{value:,}"
        elif attr == "wall_seconds" and e.train_seconds is not None:
            title = f"{format_cell('train_seconds', e.train_seconds)} of optimizer steps"
        cells.append(
            Cell(
                text=format_cell(attr, value),
                value="" if value is None else repr(value),
                key=attr,
                title=title,
            )
        )
    return BoardRow(
        label=e.label,
        anchor=f"model-{slug(e.label)}",
        color=color,
        first=e.rank == 1 and len(report.entries) > 1,
        cells=cells,
    )


def _speed_note(report: Report) -> str:
    text = speed_note(report.entries)
    if any(e.images_per_second is not None for e in report.entries):
        t = report.threads
        text += f", measured on this machine with {t} thread{'s' if t != 1 else ''}"
    return text


def _duration_tick(v: float) -> str:
    if v < 60:
        return f"{v:.2g}s" if v < 1 else f"{v:g}s"
    return f"{v / 60:g}m" if v < 3600 else f"{v / 3600:g}h"


def _count_tick(v: float) -> str:
    return human(v).replace(".00", "")


def _tradeoffs(report: Report, colors: dict[str, str], charts: dict[str, bytes]) -> list[Figure]:
    from . import plots

    entries = report.entries
    if len(entries) < 2:
        return []
    cols = [colors[e.label] for e in entries]
    nice_counts = [m * 10**p for p in range(0, 15) for m in (1, 2, 5)]
    nice_times = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200]
    nice_times += [h * 3600 for h in (4, 8, 12, 24, 48, 96)]
    charts[CHART_FILES[0]] = plots.plot_tradeoff(
        [(e.label, e.macs, e.test_accuracy) for e in entries],
        xlabel="multiply-adds per image (log scale)",
        title="Test accuracy against multiply-adds",
        colors=cols,
        xformat=_count_tick,
        xticks=nice_counts,
    )
    charts[CHART_FILES[1]] = plots.plot_tradeoff(
        [(e.label, e.wall_seconds, e.test_accuracy) for e in entries],
        xlabel="training wall time (log scale)",
        title="Test accuracy against training time",
        colors=cols,
        xformat=_duration_tick,
        xticks=nice_times,
    )
    return [
        Figure(
            data_uri(charts[CHART_FILES[0]]),
            "Test accuracy against multiply-adds, one point per model",
            "Up and to the left is better: more accuracy for less computation per image.",
        ),
        Figure(
            data_uri(charts[CHART_FILES[1]]),
            "Test accuracy against training time, one point per model",
            "Training wall time of each run on the machine it was trained on.",
        ),
    ]


def _curves(report: Report, colors: dict[str, str], charts: dict[str, bytes]) -> tuple[str, Figure]:
    from . import plots

    if len(report.entries) == 1:
        stored = stored_plot(report.runs[0], "curves.png")
        if stored is not None:
            return "Training curves", Figure(
                data_uri(stored),
                "Loss and accuracy per epoch, training and validation",
                "Loss and accuracy after every epoch, on the training batches and on the "
                "validation split carved from the training set (the run's curves.png).",
                "wide",
            )
    series = [(e.label, report.run(e.label).metrics) for e in report.entries]
    png = plots.plot_val_accuracy(series, colors=[colors[e.label] for e in report.entries])
    charts[CHART_FILES[2]] = png
    return "Validation accuracy per epoch", Figure(
        data_uri(png),
        "Validation accuracy per epoch, all models on one chart",
        "Measured after every epoch on the validation split carved from the training set.",
        "wide",
    )


def per_class(report: Report, label: str) -> tuple[list[str] | None, list[float | None] | None]:
    """(class names, per-class test accuracy) of a run: measured now, else result.json's."""
    a = report.analyses[label]
    figures = a.per_class_accuracy
    if figures is None:
        recorded = report.run(label).result.get("test_per_class_accuracy")
        figures = list(recorded) if isinstance(recorded, list) else None
    classes = a.classes
    if figures is not None and (classes is None or len(classes) != len(figures)):
        classes = [f"class {i}" for i in range(len(figures))]
    return classes, figures


def _shade(value: float | None, lo: float, hi: float) -> str:
    if value is None:
        return ""
    t = 1.0 if hi - lo < 1e-9 else (value - lo) / (hi - lo)
    return f"background:hsl({round(10 + 110 * t)},62%,90%)"


def _per_class_table(report: Report) -> PerClass:
    table = {e.label: per_class(report, e.label) for e in report.entries}
    usable = [(lbl, c, p) for lbl, (c, p) in table.items() if p is not None]
    if not usable:
        return PerClass(missing="No per-class figures: the test set could not be evaluated.")
    if len({tuple(c) for _, c, _ in usable}) > 1:
        return PerClass(missing="The runs have different classes; see each model below.")
    classes = usable[0][1]
    values = [v for _, _, p in usable for v in p if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    rows = [
        (
            name,
            [
                Cell(
                    text=pct(p[k]),
                    value="" if p[k] is None else repr(p[k]),
                    style=_shade(p[k], lo, hi),
                )
                for _, _, p in usable
            ],
        )
        for k, name in enumerate(classes)
    ]
    return PerClass(labels=[lbl for lbl, _, _ in usable], rows=rows)


def _confusion(report: Report, run: Run, a: RunAnalysis, label: str, plots) -> Figure | None:
    alt = f"Confusion matrix of {label} on the test set"
    stored = stored_plot(run, "confusion.png") if report.reuse_plots else None
    if stored is not None and a.confusion is not None:
        return Figure(data_uri(stored), alt, cls="confusion")
    if a.confusion is not None and a.classes is not None:
        return Figure(data_uri(plots.plot_confusion(a.confusion, a.classes)), alt, cls="confusion")
    if (run.path / "confusion.png").is_file():
        return Figure(
            data_uri((run.path / "confusion.png").read_bytes()),
            alt,
            "As drawn at the end of training (confusion.png).",
            cls="confusion",
        )
    return None


def _mistakes(a: RunAnalysis, label: str, plots) -> tuple[Figure | None, str]:
    if a.mistakes and a.classes:
        titles = [
            f"true: {a.classes[m.true]}\npred: {a.classes[m.predicted]} ({m.confidence:.0%})"
            for m in a.mistakes
        ]
        png = plots.plot_mistakes([m.image for m in a.mistakes], titles)
        wrong = sum(sum(row) - row[i] for i, row in enumerate(a.confusion)) if a.confusion else None
        of = f" (of {wrong:,} misclassified)" if wrong is not None else ""
        caption = (
            f"The {len(a.mistakes)} test images{of} that {label} got wrong with the highest "
            "confidence (softmax probability of the predicted class)."
        )
        alt = f"Most confidently misclassified test images of {label}"
        return Figure(data_uri(png), alt, caption, "wide mistakes"), ""
    if a.confusion is not None:
        return None, "No misclassified test images."
    return None, "Not available: the test set could not be evaluated."


def _anatomy(a: RunAnalysis, label: str) -> Anatomy | None:
    s = a.summary
    if s is None:
        return None
    return Anatomy(
        label=label,
        input_size="x".join(map(str, s.input_size)),
        blocks=len(s.rows),
        params=s.total_params,
        macs=s.total_macs,
        rows=[
            {
                "name": row.name,
                "kind": row.kind,
                "shape": "x".join(map(str, row.output_shape)),
                "params": row.params,
                "macs": row.macs,
            }
            for row in s.rows
        ],
    )


def _model_view(report: Report, e: Entry, color: str, plots) -> ModelView:
    run = report.run(e.label)
    a = report.analyses[e.label]
    r = run.result
    form = "small-input form" if r.get("small_input") else "faithful form"
    size = "x".join(str(s) for s in r.get("input_size") or [])
    width = r.get("width")
    detail = f"{form}, input {size}" + (f", width {width:g}" if isinstance(width, float) else "")
    classes, figures = per_class(report, e.label)
    bars = None
    if figures is not None and classes is not None:
        bars = [
            (name, round((v or 0) * 100, 1), pct(v))
            for name, v in zip(classes, figures, strict=True)
        ]
    mistakes, mistakes_note = _mistakes(a, e.label, plots)
    return ModelView(
        anchor=f"model-{slug(e.label)}",
        rank=e.rank,
        label=e.label,
        color=color,
        test_accuracy=pct(e.test_accuracy),
        facts=[
            f"best validation accuracy {pct(e.best_val_accuracy)}",
            f"{format_cell('params', e.params)} parameters",
            f"{format_cell('macs', e.macs)} multiply-adds",
            f"{format_cell('epochs', e.epochs)} epoch{'' if e.epochs == 1 else 's'} in "
            f"{format_cell('wall_seconds', e.wall_seconds)}",
        ],
        detail=detail,
        run_dir=str(run.path),
        weights=a.weights,
        confusion=_confusion(report, run, a, e.label, plots),
        class_bars=bars,
        mistakes=mistakes,
        mistakes_note=mistakes_note,
        anatomy=_anatomy(a, e.label),
        config=json.dumps(run.config, indent=2) if run.config else None,
        notes=list(a.notes),
    )


def _environment(report: Report) -> Environment:
    v = report.versions
    rows, commands = [], []
    for e in report.entries:
        run = report.run(e.label)
        r = run.result
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
        rows.append([str(c) for c in cells])
        commands.append((e.label, str(r.get("command") or run.config.get("command") or "—")))
    return Environment(
        date=report.date,
        command=report.command,
        machine=report.machine,
        platform=v.get("platform", ""),
        versions=", ".join(f"{k} {val}" for k, val in v.items() if k != "platform"),
        runs=rows,
        commands=commands,
    )
