"""convzoo.report.plots: curves.png and confusion.png are real, non-blank PNG images."""

from __future__ import annotations

import pytest
from PIL import Image

from convzoo.data.datasets import FASHION_MNIST_CLASSES
from convzoo.report.plots import plot_confusion, plot_curves

CLASSES = FASHION_MNIST_CLASSES


def metrics(n: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_accuracy": 0.5 + 0.04 * e,
            "val_loss": 2.1 / e + 0.1,
            "val_accuracy": 0.45 + 0.035 * e,
            "lr": 0.1 / e,
            "seconds": 3.0,
        }
        for e in range(1, n + 1)
    ]


def check_png(path, min_side: int = 300) -> Image.Image:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert min(im.size) >= min_side
        rgb = im.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20, "the image is (almost) a single colour"
    return rgb


def has_colour(im: Image.Image, rgb: tuple[int, int, int], tol: int = 30) -> bool:
    return any(
        all(abs(a - b) <= tol for a, b in zip(c, rgb, strict=True))
        for _, c in im.getcolors(maxcolors=1 << 20)
    )


def test_curves_png(tmp_path):
    path = tmp_path / "curves.png"
    plot_curves(metrics(8), path)
    im = check_png(path)
    assert im.size[0] > im.size[1]  # two panels side by side
    assert has_colour(im, (0x1F, 0x77, 0xB4)) and has_colour(im, (0xD6, 0x27, 0x28))


def test_curves_with_one_epoch_and_missing_validation(tmp_path):
    rows = metrics(1)
    rows[0]["val_loss"] = None
    del rows[0]["val_accuracy"]
    path = tmp_path / "sub" / "curves.png"  # parent directories are created
    plot_curves(rows, path)
    check_png(path)


def test_plots_are_drawn_to_memory(tmp_path, monkeypatch):
    """Without a path nothing is written; with one, the file is the returned bytes."""
    monkeypatch.chdir(tmp_path)
    png = plot_curves(metrics(3))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "curves.png"
    assert plot_curves(metrics(3), path) == path.read_bytes()
    confusion = [[5, 1], [2, 4]]
    assert (
        plot_confusion(confusion, ["a", "b"], tmp_path / "c.png")
        == (tmp_path / "c.png").read_bytes()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "curves.png"]  # no temp files


def test_curves_without_rows_still_draw_the_axes(tmp_path):
    path = tmp_path / "curves.png"
    plot_curves([], path)
    check_png(path)


def test_confusion_png(tmp_path):
    confusion = [[(90 if i == j else (i + 2 * j) % 5) for j in range(10)] for i in range(10)]
    path = tmp_path / "confusion.png"
    plot_confusion(confusion, CLASSES, path)
    im = check_png(path, min_side=500)
    assert has_colour(im, (8, 48, 107), tol=40)  # the dark end of "Blues" on the diagonal


def test_confusion_colour_is_row_normalised(tmp_path):
    # Two classes of very different sizes, both half right: row-normalised, all four cells
    # are 0.5 and share one colour (normalised by the largest count, row 1 would be blank).
    confusion = [[1000, 1000], [1, 1]]
    path = tmp_path / "confusion.png"
    plot_confusion(confusion, ["big", "small"], path)
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size
    # The colour of 0.5 in "Blues" covers a good part of the image.
    half = (107, 174, 214)
    count = sum(
        n
        for n, c in rgb.getcolors(1 << 20)
        if all(abs(a - b) <= 12 for a, b in zip(c, half, strict=True))
    )
    assert count > (w * h) // 20  # all four cells are about that colour


@pytest.mark.slow  # a 40x40 matrix of labelled cells
def test_many_classes(tmp_path):
    k = 40
    confusion = [[(7 if i == j else 1) for j in range(k)] for i in range(k)]
    path = tmp_path / "confusion.png"
    plot_confusion(confusion, [f"class {i}" for i in range(k)], path)
    check_png(path)


def test_confusion_shape_errors(tmp_path):
    with pytest.raises(ValueError, match="square"):
        plot_confusion([[1, 2], [3]], ["a", "b"], tmp_path / "c.png")
    with pytest.raises(ValueError, match="class names"):
        plot_confusion([[1, 2], [3, 4]], ["a"], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()
