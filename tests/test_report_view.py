"""The report without training: escaping, the template as package data, outputs that
would overwrite a run's files, a safetensors file that claims a huge model, and the
speed measurement with and without an optimiser."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import convzoo
from convzoo.artifacts import (
    CHECKPOINT_DIR,
    model_meta,
    run_inputs,
    write_json,
    write_model_safetensors,
)
from convzoo.cli import main
from convzoo.errors import CheckpointError, ConfigError
from convzoo.report import analysis
from convzoo.report.analysis import Mistake, RunAnalysis, load_final_model
from convzoo.report.html import Report, build_report, render_html
from convzoo.report.leaderboard import leaderboard
from convzoo.report.runs import Run, load_run

HOSTILE = "<script>alert(\"x\")</script> & 'q' </td>"


class Text(HTMLParser):
    """All text and every attribute value of a page, entities decoded."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.attrs: list[str] = []
        self.tags: set[str] = set()
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += [v for _, v in attrs if v is not None]

    def handle_data(self, data):
        self.parts.append(data)


def hostile_report(tmp_path: Path) -> Report:
    """Two runs whose label, classes, notes, command, config and machine are hostile."""
    classes = [HOSTILE, "b&c"]
    runs, analyses = [], {}
    for name, acc in ((HOSTILE, 0.75), ("plain", 0.5)):
        result = {
            "model": name,
            "test_accuracy": acc,
            "best_val_accuracy": acc - 0.1,
            "params": 1000,
            "macs": 20000 if name == "plain" else 50000,
            "wall_seconds": 3.0 if name == "plain" else 9.0,
            "epochs": 1,
            "command": f"convzoo train {name}",
            "recipe": name,
        }
        run = Run(
            path=tmp_path / name.replace("/", "_"),
            result=result,
            config={"note": name},
            metrics=[{"epoch": 1, "val_accuracy": acc}, {"epoch": 2, "val_accuracy": acc}],
            label=name,
        )
        runs.append(run)
        image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 15
        analyses[name] = RunAnalysis(
            classes=classes,
            confusion=[[3, 1], [1, 3]],
            per_class_accuracy=[0.75, 0.75],
            mistakes=[Mistake(index=0, image=image, true=0, predicted=1, confidence=0.9)],
            weights=name,
            notes=[f"note about {name}"],
        )
    return Report(
        runs=runs,
        analyses=analyses,
        entries=leaderboard(runs),
        command=f"convzoo report {HOSTILE}",
        date=HOSTILE,
        machine=HOSTILE,
        versions={"convzoo": HOSTILE, "platform": HOSTILE},
        threads=1,
        notes=[HOSTILE],
    )


@pytest.mark.slow  # draws six plots
def test_hostile_text_comes_out_escaped(tmp_path):
    page = render_html(hostile_report(tmp_path))
    assert "<script" not in page.lower() and "</td> &" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;q&#39; &lt;/td&gt;" in page
    parsed = Text(page)
    assert "script" not in parsed.tags
    text = "".join(parsed.parts)
    # read back, every place shows the text as it was given
    for where in (
        f"convzoo report {HOSTILE}",  # the command
        f"convzoo train {HOSTILE}",  # a run's command
        f"note about {HOSTILE}",  # a note
        f'"note": "{HOSTILE}"'.replace('"x"', '\\"x\\"'),  # config.json
    ):
        assert where in text, where
    assert text.count(HOSTILE) >= 10  # label, class names, machine, versions, ...
    assert HOSTILE in parsed.attrs  # data-run of its leaderboard row
    assert f"Confusion matrix of {HOSTILE} on the test set" in parsed.attrs  # alt text


def test_template_and_css_are_package_data():
    folder = resources.files("convzoo.report") / "templates"
    assert "{{ page.title }}" in (folder / "report.html.j2").read_text(encoding="utf-8")
    assert ".board" in (folder / "report.css").read_text(encoding="utf-8")
    from convzoo.report.html import template_environment

    env = template_environment()
    template = env.get_template("report.html.j2")
    assert env.autoescape is True or env.autoescape(template.name)


# ---------------------------------------------------------------------------------------
# Outputs never overwrite inputs


def fake_finished_run(folder: Path) -> Path:
    write_json(folder / "result.json", {"model": "nin", "test_accuracy": 0.5})
    return folder


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("name", [str(p) for p in run_inputs("RUN")] + ["RUN/checkpoints"])
def test_report_refuses_to_overwrite_a_run_file(tmp_path, capsys, name):
    run_dir = fake_finished_run(tmp_path / "RUN")
    target = tmp_path / name
    existed = target.exists()
    before = target.read_bytes() if existed and target.is_file() else None
    rc = main(["report", str(run_dir), "--out", str(target), "--no-speed", "--quiet"])
    assert rc == 2
    line = one_line(capsys)
    assert line.startswith("convzoo report: error: --out") and str(target) in line
    if before is not None:
        assert target.read_bytes() == before
    else:
        assert target.exists() == existed


def test_report_refuses_the_second_runs_files_too(tmp_path, capsys):
    a = fake_finished_run(tmp_path / "a")
    b = fake_finished_run(tmp_path / "b")
    (b / CHECKPOINT_DIR).mkdir()
    (b / CHECKPOINT_DIR / "best.pt").write_bytes(b"weights")
    out = b / CHECKPOINT_DIR / "best.pt"
    assert main(["report", str(a), str(b), "--out", str(out), "--no-speed"]) == 2
    assert "checkpoints/best.pt" in one_line(capsys)
    assert out.read_bytes() == b"weights"


# ---------------------------------------------------------------------------------------
# A small model.safetensors that claims a huge model


def huge_claim_run(folder: Path) -> Path:
    """A run with a 0.7 MB model.safetensors (resnet18 at width 1/8) whose metadata
    says width 8: that model would take about 2.9 GB."""
    options = dict(num_classes=10, in_channels=1, small_input=True, width=0.125)
    model = convzoo.get_model("resnet18", **options)
    meta = model_meta(
        model_name="resnet18",
        model_options={**options, "width": 8.0},
        classes=[str(i) for i in range(10)],
        mean=[0.5],
        std=[0.5],
        image_size=[28, 28],
        in_channels=1,
        dataset="fashion-mnist",
    )
    write_model_safetensors(folder / "model.safetensors", model.state_dict(), meta)
    write_json(
        folder / "result.json",
        {"model": "resnet18", "test_accuracy": 0.5, "input_size": [1, 28, 28]},
    )
    assert (folder / "model.safetensors").stat().st_size < 1_000_000
    return folder


def test_a_huge_claim_is_refused_before_building_it(tmp_path):
    run = load_run(huge_claim_run(tmp_path / "run"))
    with pytest.raises(CheckpointError, match="do not fit resnet18") as exc:
        load_final_model(run)
    assert "\n" not in str(exc.value)


@pytest.mark.slow  # a fresh interpreter
def test_report_of_a_huge_claim_stays_small(tmp_path):
    run_dir = huge_claim_run(tmp_path / "run")
    empty = tmp_path / "no-data"
    empty.mkdir()
    code = (
        "import resource, sys\n"
        "from convzoo.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    argv = ["report", str(run_dir), "--out", str(tmp_path / "r.html"), "--no-speed"]
    argv += ["--data-dir", str(empty), "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    maxrss_mb = int(proc.stdout.split("maxrss_kb")[1]) / 1024
    assert maxrss_mb < 1500, maxrss_mb  # the claimed model alone is 2,900 MB
    warnings = [line for line in proc.stderr.splitlines() if "could not be loaded" in line]
    assert len(warnings) == 1 and "do not fit resnet18" in warnings[0], proc.stderr
    assert "could not be loaded" in (tmp_path / "r.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------
# Speed


def tiny_nin():
    model = convzoo.get_model("nin", num_classes=10, in_channels=1, small_input=True, width=0.125)
    return model.eval()


def test_speed_with_and_without_an_optimiser():
    model = tiny_nin()
    seen = {}

    def optimize(m, example, backend):
        seen.update(backend=backend, shape=tuple(example.shape), same=m is model)
        return m

    fast = analysis.measure_speed(
        model, (1, 28, 28), batch=8, optimize=optimize, min_seconds=0, warmup=1, repeats=2
    )
    assert fast["backend"] == "fast" and fast["images_per_second"] > 0
    assert seen == {"backend": "fast", "shape": (8, 1, 28, 28), "same": False}  # a copy
    eager = analysis.measure_speed(model, (1, 28, 28), batch=8, min_seconds=0, repeats=2)
    assert eager["backend"] == "eager" and "fallback_reason" not in eager

    def broken(*args, **kwargs):
        raise RuntimeError("cannot fuse")

    fell = analysis.measure_speed(
        model, (1, 28, 28), batch=8, optimize=broken, min_seconds=0, repeats=2
    )
    assert fell["backend"] == "eager" and "cannot fuse" in fell["fallback_reason"]
    assert model.training is False


def test_speed_with_convzoo_infer():
    from convzoo.infer import optimize

    speed = analysis.measure_speed(
        tiny_nin(), (1, 28, 28), batch=8, optimize=optimize, min_seconds=0, repeats=2
    )
    assert speed["backend"] == "fast" and "fallback_reason" not in speed, speed


@pytest.mark.slow  # a fresh interpreter
def test_report_imports_nothing_above_or_beside_it():
    code = (
        "import sys, convzoo.report.html, convzoo.report.run_files, convzoo.report.plots\n"
        "bad = [m for m in sys.modules if m.split('.')[:2] in (['convzoo', 'train'],"
        " ['convzoo', 'cli'], ['convzoo', 'compare'], ['convzoo', 'bench'],"
        " ['convzoo', 'training'], ['convzoo', 'infer'], ['convzoo', 'export'])]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_build_report_refuses_before_analysing(tmp_path, monkeypatch):
    run_dir = fake_finished_run(tmp_path / "run")
    (run_dir / "config.json").write_text(json.dumps({"model": "nin"}))

    def never(*args, **kwargs):
        raise AssertionError("analysed a run before checking --out")

    monkeypatch.setattr("convzoo.report.html.analyse_run", never)
    with pytest.raises(ConfigError, match="would overwrite the run's own config.json"):
        build_report([run_dir], run_dir / "config.json", speed=False)
    assert json.loads((run_dir / "config.json").read_text()) == {"model": "nin"}
