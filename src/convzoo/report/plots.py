"""Training curves and confusion matrices as PNG files.

Figures are drawn with matplotlib's object-oriented interface on the Agg canvas, so no
display is needed and pyplot's global state (and whatever backend it picked) is left
alone.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ConvzooError

__all__ = ["plot_confusion", "plot_curves"]

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


def _save(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")


def _series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(metrics):
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        xs.append(float(row.get("epoch", i + 1)))
        ys.append(float(value))
    return xs, ys


def plot_curves(metrics: list[dict], path) -> None:
    """Loss (left) and accuracy (right) per epoch, training and validation, into ``path``.

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
    _save(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path) -> None:
    """The confusion matrix ``confusion[true][predicted]`` as a heat map, into ``path``.

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
    _save(fig, path)
