"""`convzoo compare`: trains models as `convzoo train` would, ranks runs, rejects bad input."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from conftest import write_idx_dataset

from convzoo.cli import build_parser, main
from convzoo.cli.compare_cmd import ALL_MODELS, models_to_train
from convzoo.registry import list_models
from convzoo.train import build_config

TINY = ["--width", "0.125", "--epochs", "1", "--val-size", "20", "--batch-size", "50"]
TINY += ["--threads", "1", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """`convzoo compare resnet18 nin` on a tiny synthetic Fashion-MNIST: (out dir, data dir)."""
    root = tmp_path_factory.mktemp("compare")
    data = write_idx_dataset(root / "data", n_train=120, n_test=40)
    out = root / "cmp"
    argv = ["compare", "resnet18", "nin", *TINY, "--data-dir", str(data), "--out", str(out)]
    assert main(argv) == 0
    return out, data


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def table_rows(markdown: str) -> list[list[str]]:
    """The leaderboard table's body rows, split into cells."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def one_line_error(capsys, command: str = "compare") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"convzoo {command}: error:"), lines[0]
    return lines[0]


@pytest.mark.slow
def test_compare_trains_each_model_like_convzoo_train(compared):
    out, data = compared
    for model in ("resnet18", "nin"):
        run_dir = out / "runs" / model
        r = result(run_dir)
        assert r["model"] == model and r["seed"] == 3 and r["width"] == 0.125
        assert r["epochs"] == 1
        # the recipe convzoo train would apply (or none) and the equivalent command line
        expected = build_config(model, {"dataset": "fashion-mnist"}).recipe
        assert r["recipe"] == expected
        assert r["command"].startswith(f"convzoo train {model} ")
        assert f"--out {run_dir}" in r["command"]
        assert (run_dir / "report.html").is_file()  # written by training itself
    assert (out / "report.html").is_file()
    md = (out / "leaderboard.md").read_text()
    assert md.startswith("# convzoo leaderboard")
    assert "- command: `convzoo compare resnet18 nin" in md
    rows = table_rows(md)
    assert sorted(row[1] for row in rows) == ["nin", "resnet18"]
    accs = [result(out / "runs" / row[1])["test_accuracy"] for row in rows]
    assert accs == sorted(accs, reverse=True)


@pytest.mark.slow
def test_compare_writes_its_charts_as_png_files(compared):
    """The report's comparison charts also land next to leaderboard.md, the same images."""
    from PIL import Image

    from convzoo.report.html import CHART_FILES

    out, _ = compared
    html = (out / "report.html").read_text()
    for name in CHART_FILES:
        png = (out / name).read_bytes()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
        assert base64.b64encode(png).decode("ascii") in html  # the very image embedded
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_compare_explains_the_same_test_images_with_each_model(compared):
    """The report's side-by-side section: one row per picked test image, one column per
    model, each cell the model's own explain picture of that image."""
    import re

    out, _ = compared
    html = (out / "report.html").read_text()
    assert 'id="explained"' in html and 'href="#explained"' in html
    section = html[html.index('id="explained"') : html.index('id="environment"')]
    heads = re.findall(r'<th scope="col">([^<]*)</th>', section)
    assert heads == ["resnet18", "nin"]
    pages = {"resnet18": out / "explain" / "01-resnet18", "nin": out / "explain" / "02-nin"}
    shown = []
    for model, folder in pages.items():
        summary = json.loads((folder / "explain.json").read_text())
        assert summary["model"] == model
        shown.append([e["test_index"] for e in summary["examples"]])
        for e in summary["examples"]:
            png = (folder / e["cam"]).read_bytes()
            assert base64.b64encode(png).decode("ascii") in section
    assert shown[0] == shown[1] and shown[0]  # the same images for both models
    rows = re.findall(r'<th class="name" scope="row">test image #(\d+)', section)
    assert [int(r) for r in rows] == shown[0]


@pytest.mark.slow
def test_compare_again_reuses_finished_runs(compared, capsys, tmp_path):
    out, data = compared
    again = tmp_path / "again"
    shutil.copytree(out, again)
    run_dir = again / "runs" / "nin"
    before = (run_dir / "result.json").stat().st_mtime_ns
    argv = ["compare", "nin", *TINY, "--data-dir", str(data), "--out", str(again)]
    argv += ["--no-speed", "--no-explain"]
    argv.remove("--quiet")
    assert main(argv) == 0
    assert (run_dir / "result.json").stat().st_mtime_ns == before
    assert "already trained" in capsys.readouterr().err
    assert 'id="explained"' not in (again / "report.html").read_text()


@pytest.mark.slow
def test_compare_resumes_an_interrupted_run(compared, tmp_path):
    """A run with checkpoints but no result.json is finished, not started again."""
    out, data = compared
    copy = tmp_path / "cmp"
    shutil.copytree(out, copy)
    run_dir = copy / "runs" / "nin"
    (run_dir / "result.json").unlink()
    argv = ["compare", "nin", *TINY, "--data-dir", str(data), "--out", str(copy), "--no-speed"]
    assert main(argv) == 0
    r = result(run_dir)
    assert r["resumed"] is True and r["steps"] == result(out / "runs" / "nin")["steps"]


@pytest.mark.slow
def test_compare_runs_writes_the_leaderboard_in_accuracy_order(compared, tmp_path):
    out, _ = compared
    # a third run, a copy of nin made to look best
    best = tmp_path / "best-nin"
    shutil.copytree(out / "runs" / "nin", best)
    r = result(best)
    r["test_accuracy"] = 0.999
    (best / "result.json").write_text(json.dumps(r))
    dest = tmp_path / "board"
    runs = [out / "runs" / "resnet18", out / "runs" / "nin", best]
    argv = ["compare", "--runs", *map(str, runs), "--out", str(dest), "--no-speed", "--quiet"]
    assert main(argv) == 0
    rows = table_rows((dest / "leaderboard.md").read_text())
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert rows[0][1] == "nin (best-nin)" and rows[0][2] == "99.90%"
    labels = {"resnet18": out / "runs" / "resnet18", "nin (nin)": out / "runs" / "nin"}
    for row in rows[1:]:
        got = result(labels[row[1]])
        assert row[2] == f"{got['test_accuracy'] * 100:.2f}%"
        assert row[3] == f"{got['best_val_accuracy'] * 100:.2f}%"
    later = [result(labels[row[1]])["test_accuracy"] for row in rows[1:]]
    assert later == sorted(later, reverse=True)
    assert (dest / "report.html").is_file()
    assert not (dest / "runs").exists()  # nothing was trained


def test_all_means_the_six_families(tmp_path):
    args = build_parser().parse_args(["compare", "--all"])
    assert models_to_train(args) == list(ALL_MODELS)
    assert set(ALL_MODELS) <= set(list_models())
    args = build_parser().parse_args(["compare", "resnet18", "nin", "--all"])
    assert models_to_train(args) == [
        "resnet18",
        "nin",
        *[m for m in ALL_MODELS if m not in ("resnet18", "nin")],
    ]


@pytest.mark.slow
def test_compare_bad_inputs(compared, tmp_path, capsys, monkeypatch):
    out, data = compared
    monkeypatch.chdir(tmp_path)  # where a default --out would go
    a_file = tmp_path / "file"
    a_file.write_text("x")
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    run = str(out / "runs" / "nin")
    cases = [
        (["resnet18", "resnett50"], "unknown model 'resnett50'"),
        ([], "no models to compare"),
        (["--runs", str(not_a_run)], "not a finished run"),
        (["--runs", str(tmp_path / "missing")], "does not exist"),
        (["--runs", run, str(a_file)], "is not a run directory"),
        (["nin", "--runs", run], "not both"),
        (["--runs", run, "--epochs", "2"], "--epochs has no effect with --runs"),
        (["nin", "--out", str(a_file)], "is not a directory"),
        # the same --out with other settings: never mixed into one comparison
        (["nin", *TINY[:2], "--epochs", "2", "--data-dir", str(data), "--out", str(out)],
         "already holds a nin run with --epochs"),
    ]  # fmt: skip
    for argv, message in cases:
        capsys.readouterr()
        assert main(["compare", *argv]) == 2, argv
        line = one_line_error(capsys)
        assert message in line, line
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as exc:
        main(["compare", "nin", "--epochs", "0"])
    assert exc.value.code == 2
    one_line_error(capsys)


def test_compare_never_writes_over_a_runs_files(tmp_path, capsys):
    """--out may not be a run of the comparison: its report.html is the run's own."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"model": "nin", "test_accuracy": 0.5}))
    (run / "report.html").write_text("the run's own report")
    assert main(["compare", "--runs", str(run), "--out", str(run), "--no-speed"]) == 2
    assert "--out" in one_line_error(capsys)
    assert (run / "report.html").read_text() == "the run's own report"
