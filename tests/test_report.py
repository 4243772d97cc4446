"""The HTML report of real (tiny) training runs: sections, embedded images, figures.

Two runs (resnet18 and NiN at width 1/8, one epoch on a small synthetic Fashion-MNIST)
are trained once for the module (as `convzoo train` does, plots and one-run report
included); reports are built from them and parsed. Tests that use them are slow.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import write_idx_dataset
from PIL import Image

from convzoo.cli import main
from convzoo.report import html as report_html
from convzoo.report.leaderboard import format_cell, format_markdown, leaderboard
from convzoo.report.runs import Run, load_runs
from convzoo.train import TrainConfig
from convzoo.training import train_run

SECTIONS = ("leaderboard", "tradeoffs", "curves", "per-class", "models", "environment")
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker"]
FASHION += ["Bag", "Ankle boot"]


def tiny_config(model: str, data: Path, out: Path, **changes) -> TrainConfig:
    options = dict(
        model=model,
        data_dir=str(data),
        width=0.125,
        val_size=20,
        batch_size=50,
        epochs=1,
        deterministic=True,
        threads=1,
        quiet=True,
        out=str(out),
    )
    options.update(changes)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs: (data folder, [resnet18 run dir, nin run dir])."""
    root = tmp_path_factory.mktemp("report-runs")
    data = write_idx_dataset(root / "data", n_train=120, n_test=40)
    dirs = []
    for model in ("resnet18", "nin"):
        out = root / model
        train_run(tiny_config(model, data, out))
        dirs.append(out)
    return data, dirs


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    """A report of both runs, built with a short speed measurement: (path, Report)."""
    _, dirs = runs
    out = tmp_path_factory.mktemp("report") / "report.html"
    rep = report_html.build_report(dirs, out, command="convzoo report test", speed_seconds=0.05)
    return out, rep


class Page(HTMLParser):
    """The parts of a report the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.tags: dict[str, int] = {}
        self.images: list[dict] = []
        self.urls: list[str] = []
        self.rows: list[dict] = []  # leaderboard rows: {"run": label, key: (value, text)}
        self.details: list[str] = []
        self.text_parts: list[str] = []
        self._row: dict | None = None
        self._cell: tuple[str, str] | None = None
        self._cell_text: list[str] = []
        self._in_board = False
        self.feed(text)
        self.text = " ".join(self.text_parts)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if "id" in a:
            self.ids.append(a["id"])
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "img":
            self.images.append(a)
        if tag == "details":
            self.details.append(a.get("class", ""))
        if tag == "table" and "board" in a.get("class", ""):
            self._in_board = True
        if self._in_board and tag == "tr" and "data-run" in a:
            self._row = {"run": a["data-run"]}
        if self._row is not None and tag == "td":
            self._cell = (a.get("data-key", ""), a.get("data-value", ""))
            self._cell_text = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._row is not None:
            key, value = self._cell
            self._row[key] = (value, "".join(self._cell_text).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        if tag == "table":
            self._in_board = False

    def handle_data(self, data):
        self.text_parts.append(data)
        if self._cell is not None:
            self._cell_text.append(data)


def decode_image(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:60]
    raw = base64.b64decode(uri[len(prefix) :], validate=True)
    im = Image.open(io.BytesIO(raw))
    im.load()
    assert im.format == "PNG"
    return im.convert("RGB")


def check_not_blank(im: Image.Image) -> None:
    colours = im.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20, "the image is (almost) a single colour"
    pixels = np.asarray(im, dtype=np.float32)
    assert pixels.std() > 5


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_section_and_model_part_is_there(report, runs):
    path, rep = report
    page = Page(path.read_text(encoding="utf-8"))
    for section in SECTIONS:
        assert section in page.ids, f"section {section} is missing"
    assert "model-resnet18" in page.ids and "model-nin" in page.ids
    assert page.details.count("anatomy") == 2
    assert page.details.count("config") == 2
    # class names (confusion matrices are images; the per-class tables are text)
    for name in FASHION:
        assert name in page.text
    # the machine, the versions and each run's command
    import torch

    assert torch.__version__ in page.text
    for run_dir in runs[1]:
        assert result(run_dir)["command"] in page.text
    assert "convzoo report test" in page.text
    assert page.tags.get("h2", 0) >= len(SECTIONS)


@pytest.mark.slow
def test_every_image_is_embedded_and_decodes(report):
    path, _ = report
    page = Page(path.read_text(encoding="utf-8"))
    # 2 trade-off charts, 1 curves chart, a confusion matrix and a grid of mistakes per model
    assert len(page.images) == 7
    for img in page.images:
        im = decode_image(img["src"])
        assert min(im.size) >= 200, im.size
        check_not_blank(im)
        assert img.get("alt")


@pytest.mark.slow
def test_self_contained(report):
    path, _ = report
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert "script" not in page.tags and "link" not in page.tags
    assert "iframe" not in page.tags and "object" not in page.tags
    for url in page.urls:
        assert url.startswith(("data:image/png;base64,", "#")), url[:80]
    style = text[text.index("<style>") : text.index("</style>")]
    assert "url(" not in style and "@import" not in style and "@font-face" not in style


@pytest.mark.slow
def test_leaderboard_numbers_are_the_runs_results(report, runs):
    path, rep = report
    page = Page(path.read_text(encoding="utf-8"))
    assert [row["run"] for row in page.rows] == [e.label for e in rep.entries]
    assert sorted(row["run"] for row in page.rows) == ["nin", "resnet18"]
    accuracies = [float(row["test_accuracy"][0]) for row in page.rows]
    assert accuracies == sorted(accuracies, reverse=True)
    by_model = {result(d)["model"]: result(d) for d in runs[1]}
    keys = {
        "test_accuracy": "test_accuracy",
        "best_val_accuracy": "best_val_accuracy",
        "params": "params",
        "macs": "macs",
        "wall_seconds": "wall_seconds",
        "epochs": "epochs",
    }
    for row in page.rows:
        r = by_model[row["run"]]
        for key, rkey in keys.items():
            value, text = row[key]
            assert float(value) == r[rkey], (row["run"], key)
            assert text == format_cell(key, r[rkey])
        assert row["test_accuracy"][1] == f"{r['test_accuracy'] * 100:.2f}%"
        ips = float(row["images_per_second"][0])
        assert ips > 0 and math.isfinite(ips)


@pytest.mark.slow
def test_anatomy_tables_match_the_summary(report, runs):
    import convzoo

    _, rep = report
    for run_dir in runs[1]:
        r = result(run_dir)
        analysis = rep.analyses[r["model"]]
        assert analysis.summary.total_params == r["params"]
        assert analysis.summary.total_macs == r["macs"]
        expected = convzoo.summary(
            convzoo.get_model(r["model"], **r["model_options"]), tuple(r["input_size"])
        )
        assert [row.name for row in analysis.summary.rows] == [row.name for row in expected.rows]


@pytest.mark.slow
def test_confusion_and_mistakes_come_from_the_final_model(report, runs):
    _, rep = report
    for run_dir in runs[1]:
        r = result(run_dir)
        a = rep.analyses[r["model"]]
        assert a.accuracy == pytest.approx(r["test_accuracy"], abs=1e-9)
        assert sum(map(sum, a.confusion)) == r["test_images"] == 40
        correct = sum(a.confusion[i][i] for i in range(10))
        assert correct / 40 == pytest.approx(r["test_accuracy"])
        assert a.classes == FASHION
        wrong = 40 - correct
        assert len(a.mistakes) == min(16, wrong)
        confidences = [m.confidence for m in a.mistakes]
        assert confidences == sorted(confidences, reverse=True)
        assert all(m.true != m.predicted for m in a.mistakes)
        assert all(m.image.shape == (1, 28, 28) for m in a.mistakes)
        assert a.weights.endswith("last.pt")


@pytest.mark.slow
def test_train_writes_a_one_run_report(runs):
    _, dirs = runs
    for run_dir in dirs:
        path = run_dir / "report.html"
        assert path.is_file()
        page = Page(path.read_text(encoding="utf-8"))
        assert len(page.rows) == 1
        assert page.rows[0]["run"] == result(run_dir)["model"]
        assert page.rows[0]["images_per_second"][1] == "—"
        assert f"convzoo report {run_dir}" in page.text  # says how to measure the speed
        # the run's own curves.png and confusion.png, and the grid of mistakes
        uris = [img["src"] for img in page.images]
        assert len(uris) == 3
        for name in ("curves.png", "confusion.png"):
            stored = (run_dir / name).read_bytes()
            assert report_html.data_uri(stored) in uris
        for uri in uris:
            check_not_blank(decode_image(uri))
        for section in SECTIONS:
            assert section in page.ids


@pytest.mark.slow
def test_a_failing_report_does_not_lose_the_run(runs, tmp_path, monkeypatch, capsys):
    data, _ = runs

    def broken(*args, **kwargs):
        raise RuntimeError("no room for the report")

    monkeypatch.setattr(report_html, "write_run_report", broken)
    out = tmp_path / "run"
    res = train_run(tiny_config("nin", data, out, limit_train=50))
    kept = result(out)  # the run's results are whole and agree with its confusion matrix
    assert kept["test_accuracy"] == res.result["test_accuracy"]
    diagonal = sum(res.confusion[i][i] for i in range(len(res.confusion)))
    assert diagonal / sum(map(sum, res.confusion)) == pytest.approx(kept["test_accuracy"])
    assert (out / "curves.png").is_file() and (out / "confusion.png").is_file()
    assert not (out / "report.html").exists()
    err = capsys.readouterr().err
    assert "not written: no room for the report" in err


@pytest.mark.slow
def test_report_without_checkpoint_or_dataset(runs, tmp_path, capsys, data_env):
    """Weights from model.safetensors; with the data gone, a note and the run's confusion.png."""
    _, dirs = runs
    run_dir = tmp_path / "copy"
    shutil.copytree(dirs[1], run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = tmp_path / "r.html"
    rc = main(["report", str(run_dir), "--out", str(out), "--data-dir", str(empty), "--no-speed"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "test set could not be loaded" in err
    page = Page(out.read_text(encoding="utf-8"))
    assert len(page.images) == 2  # the run's own curves.png and confusion.png
    for img in page.images:
        check_not_blank(decode_image(img["src"]))
    assert "model.safetensors" in page.text
    assert "could not be loaded" in page.text
    assert page.details.count("anatomy") == 1


@pytest.mark.slow
def test_report_cli_default_out(runs, capsys):
    _, dirs = runs
    target = dirs[0] / "report.html"
    before = target.stat().st_mtime_ns
    assert main(["report", str(dirs[0]), "--no-speed", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert target.stat().st_mtime_ns != before


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow
def test_report_bad_inputs(runs, tmp_path, capsys):
    _, dirs = runs
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    not_json = tmp_path / "not-json"
    not_json.mkdir()
    (not_json / "result.json").write_text("{ not json")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(a_file)], "is not a run directory"),
        ([str(tmp_path)], "not a finished run"),
        ([str(partial)], "resume it"),
        ([str(not_json)], "not valid JSON"),
        ([str(dirs[0]), "--out", str(a_file / "r.html")], "is not a directory"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["report", *argv, "--no-speed"]) == 2, argv
        line = one_line_error(capsys)
        assert line.startswith("convzoo report: error:") and message in line, line
    with pytest.raises(SystemExit) as exc:
        main(["report"])
    assert exc.value.code == 2
    one_line_error(capsys)


# ---------------------------------------------------------------------------------------
# The pieces


def fake_run(tmp_path: Path, name: str, test: float, val: float | None, **extra) -> Run:
    result = {"model": name, "test_accuracy": test, "best_val_accuracy": val, **extra}
    return Run(path=tmp_path / name, result=result, label=name)


def test_leaderboard_order_and_markdown(tmp_path):
    runs = [
        fake_run(tmp_path, "b", 0.90, 0.91, params=1000, macs=2_000_000, wall_seconds=61.0),
        fake_run(tmp_path, "a", 0.95, None, params=10, macs=5, epochs=2.5),
        fake_run(tmp_path, "c", 0.90, 0.93),
    ]
    entries = leaderboard(runs, {"a": {"images_per_second": 1234.4, "backend": "eager"}})
    assert [e.label for e in entries] == ["a", "c", "b"]  # ties broken by validation
    assert [e.rank for e in entries] == [1, 2, 3]
    md = format_markdown(entries, command="convzoo compare a b c", date="today", machine="m")
    lines = md.splitlines()
    assert lines[0] == "# convzoo leaderboard"
    assert "- date: today" in lines and "- command: `convzoo compare a b c`" in lines
    table = [line for line in lines if line.startswith("| ")]
    assert table[1].split(" | ")[1:3] == ["a", "95.00%"]
    assert "1,234" in table[1] and "—" in table[1]  # no validation set
    assert "1m01s" in table[3] and "2.00M" in table[3]
    assert "eager backend" in md


@pytest.mark.slow
def test_load_runs_labels_repeated_models(runs, tmp_path):
    _, dirs = runs
    copy = tmp_path / "again"
    shutil.copytree(dirs[1], copy)
    loaded = load_runs([dirs[1], copy, dirs[1]])
    assert [r.label for r in loaded] == [f"nin ({dirs[1].name})", "nin (again)"]


def test_new_plots(tmp_path):
    from convzoo.report.plots import plot_mistakes, plot_tradeoff, plot_val_accuracy

    path = tmp_path / "t.png"
    plot_tradeoff(
        [("a", 1e6, 0.9), ("b", 0, 0.8), ("c", 3e8, 0.93)],
        path,
        xlabel="x",
        title="t",
    )
    check_not_blank(Image.open(path).convert("RGB"))
    rows = [{"epoch": e, "val_accuracy": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    plot_val_accuracy([("a", rows), ("b", [])], tmp_path / "v.png")
    check_not_blank(Image.open(tmp_path / "v.png").convert("RGB"))
    images = np.random.default_rng(0).integers(0, 255, (3, 3, 12, 10), dtype=np.uint8)
    plot_mistakes(images, ["x\ny"] * 3, tmp_path / "m.png")
    check_not_blank(Image.open(tmp_path / "m.png").convert("RGB"))
    with pytest.raises(ValueError):
        plot_mistakes(images, ["x"], tmp_path / "m.png")
    with pytest.raises(ValueError):
        plot_mistakes(images[:, :2], ["x"] * 3, tmp_path / "m.png")
    with pytest.raises(ValueError):
        plot_mistakes(images[:0], [], tmp_path / "m.png")


@pytest.mark.slow
def test_one_broken_run_does_not_sink_the_report(runs, tmp_path, monkeypatch):
    _, dirs = runs
    real = report_html.analyse_run

    def flaky(run, **kwargs):
        if run.label == "nin":
            raise RuntimeError("out of memory, say")
        return real(run, **kwargs)

    monkeypatch.setattr(report_html, "analyse_run", flaky)
    out = tmp_path / "r.html"
    md = tmp_path / "board.md"
    rep = report_html.build_report(dirs, out, markdown=md, speed=False)
    assert len(rep.entries) == 2
    assert rep.analyses["nin"].confusion is None and rep.analyses["resnet18"].confusion
    page = Page(out.read_text(encoding="utf-8"))
    assert "RuntimeError: out of memory, say" in page.text
    assert sorted(row["run"] for row in page.rows) == ["nin", "resnet18"]
    for img in page.images:
        check_not_blank(decode_image(img["src"]))
    assert "| nin |" in md.read_text()


@pytest.mark.slow
def test_one_run_report_uses_given_logits(runs, tmp_path):
    """Logits handed in (as training has them) are used instead of running the model."""
    import torch

    from convzoo.artifacts import load_checkpoint
    from convzoo.data.datasets import load_dataset
    from convzoo.registry import model_from_checkpoint

    data, dirs = runs
    ds = load_dataset("fashion-mnist", data)
    model = model_from_checkpoint(load_checkpoint(dirs[0] / "checkpoints" / "last.pt"))
    n = len(ds.test_labels)
    logits = torch.zeros(n, 10)
    logits[:, 3] = 5.0  # "Dress" for every image
    given = {"model": model, "dataset": ds, "test_logits": (logits, ds.test_labels)}
    rep = report_html.collect(load_runs([dirs[0]]), speed=False, preloaded={"resnet18": given})
    a = rep.analyses["resnet18"]
    assert a.accuracy == pytest.approx(float((ds.test_labels == 3).float().mean()))
    assert a.per_class_accuracy == [1.0 if k == 3 else 0.0 for k in range(10)]
    assert {m.predicted for m in a.mistakes} == {3}
    out = tmp_path / "one.html"
    report_html.write_run_report(
        dirs[0], model=model, dataset=ds, out=out, test_logits=(logits, ds.test_labels)
    )
    page = Page(out.read_text(encoding="utf-8"))
    assert "not measured" in page.text and "measured on this machine" not in page.text
    assert len(page.images) == 3
