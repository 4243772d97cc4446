"""Training curves, confusion matrices and the report's charts as PNG images.

Figures are drawn with matplotlib's object-oriented interface on the Agg canvas, so no
display is needed and pyplot's global state (and whatever backend it picked) is left
alone. Every plot function draws into memory and returns the PNG bytes; given a
``path`` it also writes them there, atomically
(:func:`convzoo.artifacts.atomic_write_bytes`).
"""

from __future__ import annotations

import io
import math
import os

from ..artifacts import atomic_write_bytes
from ..errors import ConvzooError

__all__ = [
    "model_colors",
    "plot_confusion",
    "plot_curves",
    "plot_loss_curves",
    "plot_mistakes",
    "plot_tradeoff",
    "plot_val_accuracy",
]

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"


def _new_figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a declared extra
        raise ConvzooError("plots need matplotlib: pip install 'convzoo[report]'") from None
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, path: str | os.PathLike | None) -> bytes:
    """The figure as PNG bytes, also written to ``path`` (atomically) when one is given."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    png = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, png)
    return png


def _series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(metrics):
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        xs.append(float(row.get("epoch", i + 1)))
        ys.append(float(value))
    return xs, ys


def plot_curves(metrics: list[dict], path: str | os.PathLike | None = None) -> bytes:
    """Loss (left) and accuracy (right) per epoch, training and validation, as PNG bytes
    (also written to ``path`` when given).

    ``metrics`` are the rows of ``metrics.jsonl``: ``epoch``, ``train_loss``,
    ``train_accuracy``, ``val_loss``, ``val_accuracy`` (accuracies as fractions), ``lr``,
    ``seconds``. Missing or None values are skipped; the best validation accuracy is
    marked.
    """
    fig = _new_figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    style = dict(marker="o", markersize=3.5, linewidth=1.8)
    for ax, key, title, scale in (
        (ax_loss, "loss", "Loss (cross-entropy)", 1.0),
        (ax_acc, "accuracy", "Accuracy (%)", 100.0),
    ):
        for split, color, label in (
            ("train", TRAIN_COLOR, "training"),
            ("val", VAL_COLOR, "validation"),
        ):
            xs, ys = _series(metrics, f"{split}_{key}")
            if xs:
                ax.plot(xs, [y * scale for y in ys], color=color, label=label, **style)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(frameon=False)
        else:
            ax.text(
                0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey"
            )
    xs, ys = _series(metrics, "val_accuracy")
    if ys:
        best = max(range(len(ys)), key=ys.__getitem__)
        ax_acc.scatter(
            [xs[best]],
            [ys[best] * 100],
            s=90,
            facecolors="none",
            edgecolors=VAL_COLOR,
            linewidths=1.5,
            zorder=3,
        )
        right = len(xs) > 1 and best >= len(xs) / 2
        ax_acc.annotate(
            f"best {ys[best] * 100:.2f}%",
            (xs[best], ys[best] * 100),
            textcoords="offset points",
            xytext=(-8 if right else 8, -16),
            ha="right" if right else "left",
            color=VAL_COLOR,
            fontsize=9,
        )
    _, epochs = _series(metrics, "epoch")
    if epochs and all(e == int(e) for e in epochs) and len(epochs) <= 20:
        for ax in (ax_loss, ax_acc):
            ax.set_xticks(sorted(set(epochs)))
    return _finish(fig, path)


def plot_confusion(
    confusion: list[list[int]], classes: list[str], path: str | os.PathLike | None = None
) -> bytes:
    """The confusion matrix ``confusion[true][predicted]`` as a heat map, as PNG bytes
    (also written to ``path`` when given).

    Cells show the counts; their colour is the count divided by the row total (the
    fraction of that true class), so classes of different sizes read alike.
    """
    k = len(confusion)
    if k == 0 or any(len(row) != k for row in confusion):
        raise ValueError("the confusion matrix must be square and non-empty")
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for a {k}x{k} confusion matrix")
    rows = [[int(c) for c in row] for row in confusion]
    totals = [sum(row) for row in rows]
    fractions = [[c / t if t else 0.0 for c in row] for row, t in zip(rows, totals, strict=True)]
    total = sum(totals)
    accuracy = sum(rows[i][i] for i in range(k)) / total if total else float("nan")

    side = min(max(4.5, 0.55 * k + 2.5), 30)
    fig = _new_figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label("fraction of the true class")
    ax.set_xticks(range(k), labels=classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix: {total:,} images, accuracy {accuracy * 100:.2f}%")
    if k <= 30:
        fontsize = 9 if k <= 12 else 7
        for t in range(k):
            for p in range(k):
                if rows[t][p] == 0 and t != p:
                    continue
                color = "white" if fractions[t][p] > 0.55 else "black"
                ax.text(
                    p,
                    t,
                    f"{rows[t][p]:,}",
                    ha="center",
                    va="center",
                    color=color,
                    fontsize=fontsize,
                )
    ax.set_xticks([x - 0.5 for x in range(1, k)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, k)], minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------
# Comparisons of several runs (the HTML report)


def model_colors(n: int) -> list[str]:
    """``n`` distinct colours (matplotlib's tab10, then tab20), one per model."""
    from matplotlib import colormaps

    names = "tab10" if n <= 10 else "tab20"
    cmap = colormaps[names]
    return [_hex(cmap(i % cmap.N)) for i in range(n)]


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


def plot_tradeoff(
    points: list[tuple[str, float, float]],
    path: str | os.PathLike | None = None,
    *,
    xlabel: str,
    title: str,
    colors: list[str] | None = None,
    xformat=None,
    xticks=None,
) -> bytes:
    """Accuracy (y, a fraction, drawn in %) against a cost (x, log scale), one labelled point each.

    ``points`` are ``(label, x, accuracy)``; points with a cost that is not positive
    cannot sit on a log axis and are left out (the title says how many). ``xformat``
    turns a tick value into its label (default: matplotlib's); ``xticks`` are candidate
    tick values (those within the axis are used when there are at least two).
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    colors = colors or model_colors(len(points))
    fig = _new_figure(5.4, 3.9)
    ax = fig.subplots()
    shown = [
        (label, float(x), float(y), color)
        for (label, x, y), color in zip(points, colors, strict=True)
        if x is not None and y is not None and math.isfinite(x) and x > 0 and math.isfinite(y)
    ]
    span = max((p[2] for p in shown), default=0) - min((p[2] for p in shown), default=0)
    placed: list[tuple[float, float]] = []
    for label, x, y, color in shown:
        ax.scatter([x], [y * 100], s=60, color=color, edgecolors="white", linewidths=1, zorder=3)
        # A label that would sit on a neighbour's (close in log-x and in accuracy) goes below.
        crowded = any(
            abs(math.log(x / px)) < 0.3 and abs(y - py) < max(span, 1e-3) * 0.08
            for px, py in placed
        )
        placed.append((x, y))
        ax.annotate(
            label,
            (x, y * 100),
            textcoords="offset points",
            xytext=(7, -13) if crowded else (7, 5),
            fontsize=9,
            color="#222222",
        )
    ax.set_xscale("log")
    if shown:
        xs = [p[1] for p in shown]
        lo, hi = min(xs), max(xs)
        ax.set_xlim(lo / 2.0, hi * 3.0)  # room on the right for the labels
        inside = [t for t in (xticks or []) if lo / 2.0 <= t <= hi * 3.0]
        if len(inside) >= 2:
            ax.xaxis.set_major_locator(FixedLocator(inside))
            ax.xaxis.set_minor_locator(NullLocator())
        ys = [p[2] * 100 for p in shown]
        span = max(max(ys) - min(ys), 2.0)
        ax.set_ylim(min(ys) - 0.25 * span, max(ys) + 0.25 * span)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    if xformat is not None:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: xformat(v)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
    left_out = len(points) - len(shown)
    ax.set_title(title + (f" ({left_out} not shown)" if left_out else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    return _finish(fig, path)


def plot_val_accuracy(
    series: list[tuple[str, list[dict]]],
    path: str | os.PathLike | None = None,
    *,
    colors: list[str] | None = None,
) -> bytes:
    """Validation accuracy per epoch of several runs on one chart.

    ``series`` are ``(label, metrics rows)`` with rows as in ``metrics.jsonl``.
    """
    colors = colors or model_colors(len(series))
    fig = _new_figure(9, 4)
    ax = fig.subplots()
    longest = 0
    for (label, metrics), color in zip(series, colors, strict=True):
        xs, ys = _series(metrics, "val_accuracy")
        if not xs:
            continue
        longest = max(longest, len(xs))
        ax.plot(
            xs,
            [y * 100 for y in ys],
            color=color,
            label=label,
            marker="o",
            markersize=3.5,
            linewidth=1.8,
        )
    ax.set_title("Validation accuracy per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(frameon=False, loc="lower right", ncols=2 if len(ax.lines) > 4 else 1)
        epochs = sorted({x for line in ax.lines for x in line.get_xdata()})
        if all(e == int(e) for e in epochs) and len(epochs) <= 20:
            ax.set_xticks(epochs)
        if len(epochs) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    return _finish(fig, path)


def plot_loss_curves(
    series: list[tuple[str, list[list[tuple[float, float]]]]],
    path: str | os.PathLike | None = None,
    *,
    title: str = "Training loss",
) -> bytes:
    """The training loss of several networks on one chart: ``series`` are ``(label,
    runs)``, each run a list of ``(epoch, training loss)``; every run is a line, in its
    network's colour (the seeds of one network share it)."""
    colors = model_colors(len(series))
    fig = _new_figure(9, 4.5)
    ax = fig.subplots()
    for (label, runs), color in zip(series, colors, strict=True):
        named = False
        for i, points in enumerate(runs):
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                color=color,
                label=None if named else label,
                marker="o",
                markersize=3,
                linewidth=1.8 if i == 0 else 1.2,
                linestyle="-" if i == 0 else "--",
            )
            named = True
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over the epoch's batches)")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        handles = [h for h in ax.lines if not h.get_label().startswith("_")]
        ax.legend(handles=handles, frameon=False, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    return _finish(fig, path)


def plot_mistakes(
    images, titles: list[str], path: str | os.PathLike | None = None, *, cols: int = 8
) -> bytes:
    """A grid of images (uint8 ``(N, C, H, W)``, C = 1 or 3), each with a short title.

    Used for the most confidently misclassified test images: the titles say the true
    and the predicted class and the confidence. The images are tiled into one picture
    (enlarged by whole pixels, no smoothing) drawn on a single axes, which is much
    faster than one axes per image.
    """
    import numpy as np

    images = np.asarray(images)
    n = len(images)
    if n == 0:
        raise ValueError("no images to draw")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {images.shape}")
    if len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images")
    images = images.astype(np.uint8)
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    h, w = images.shape[2:]
    k = max(1, math.ceil(64 / max(h, w)))  # enlarge small images by whole pixels
    ih, iw = h * k, w * k
    cell_in = 1.4  # inches per column
    gap = max(2, iw // 10)
    px_per_in = (iw + gap) / cell_in
    band = math.ceil(0.36 * px_per_in)  # room for two lines of 7 pt text
    cell_h, cell_w = band + ih + gap, iw + gap
    mosaic = np.full((rows * cell_h, cols * cell_w + gap, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y0, x0 = r * cell_h + band, c * cell_w + gap
        big = img.transpose(1, 2, 0).repeat(k, axis=0).repeat(k, axis=1)  # (ih, iw, 3)
        mosaic[y0 : y0 + ih, x0 : x0 + iw] = big
    fig = _new_figure(cell_in * cols + gap / px_per_in, mosaic.shape[0] / px_per_in)
    fig.set_layout_engine("none")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    for i, title in enumerate(titles):
        r, c = divmod(i, cols)
        ax.text(
            c * cell_w + gap + iw / 2,
            r * cell_h + band - 0.06 * px_per_in,
            title,
            ha="center",
            va="bottom",
            fontsize=7,
            linespacing=1.25,
        )
    return _finish(fig, path)
