"""`convzoo bench throughput` and `convzoo bench train` through convzoo.cli.main."""

from __future__ import annotations

import json

import pytest

from convzoo.cli import main
from convzoo.train import build_config

SMALL = ["--input", "1x28x28", "--small-input", "--width", "0.125"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_throughput_table_has_every_backend(capsys):
    rc, out, err = run_cli(capsys, "bench", "throughput", "resnet18", *SMALL, "--repeats", "2")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("resnet18 (small-input, width 0.125, 10 classes)")
    assert "batch 64" in lines[0] and "median of 2 runs" in lines[0]
    assert lines[1].startswith("CPU ") and "bf16" in lines[1]  # the native precision paths
    rows = {line.split("  ")[0].strip(): line for line in lines[4:] if line.strip()}
    assert list(rows) == ["eager NCHW", "fast", "onnxruntime", "bf16", "int8 (onnxruntime)"]
    assert rows["eager NCHW"].split()[4] == "1.00x" and rows["eager NCHW"].endswith("reference")
    for name in ("fast", "onnxruntime"):
        assert rows[name].endswith("yes"), rows[name]  # agrees with eager to 1e-4
        assert float(rows[name].split()[1]) > 0
    for name in ("bf16", "int8 (onnxruntime)"):
        assert "approximate (" in rows[name], rows[name]  # close, not equal to 1e-4


@pytest.mark.slow
def test_throughput_json_and_one_backend(capsys):
    rc, out, _ = run_cli(
        capsys, "bench", "throughput", "nin", *SMALL, "--batch", "4", "--repeats", "1",
        "--warmup", "0", "--backend", "fast", "--threads", "1", "--json",
    )  # fmt: skip
    assert rc == 0
    res = json.loads(out)
    assert res["model"] == "nin" and res["batch"] == 4 and res["threads"] == 1
    assert res["input_size"] == [1, 28, 28] and res["num_classes"] == 10
    assert set(res["precisions"]) >= {"cpu", "paths", "bf16_native", "int8_native"}
    assert [r["backend"] for r in res["rows"]] == ["eager", "fast"]
    eager, fast = res["rows"]
    assert eager["speedup"] == 1.0 and eager["max_rel_error"] == 0.0
    assert fast["max_rel_error"] <= 1e-4
    assert fast["speedup"] == pytest.approx(fast["images_per_second"] / eager["images_per_second"])
    assert fast["latency_ms"] == pytest.approx(4 / fast["images_per_second"] * 1e3)


@pytest.mark.slow
def test_train_step_throughput(capsys):
    rc, out, err = run_cli(
        capsys, "bench", "train", "resnet18", *SMALL, "--batch", "8", "--repeats", "1",
        "--warmup", "1", "--variants", "all", "--json",
    )  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    variants = [r["variant"] for r in res["rows"]]
    assert variants[0] == "eager NCHW fp32" and variants[1].startswith("convzoo default")
    # the default row is what `convzoo train resnet18` does: its Fashion-MNIST recipe
    assert "fashion-mnist/resnet recipe" in variants[1]
    recipe = build_config("resnet18")
    assert res["rows"][1]["settings"] == {
        "channels_last": recipe.channels_last, "amp": recipe.amp, "compile": recipe.compile,
    }  # fmt: skip
    assert variants[2:] == ["channels_last", "bf16 autocast", "channels_last + bf16 autocast"]
    assert res["rows"][0]["speedup"] == 1.0
    assert all(r["images_per_second"] > 0 and r["step_ms"] > 0 for r in res["rows"])
    assert res["rows"][3]["settings"] == {"channels_last": False, "amp": True, "compile": False}
    rc, out, _ = run_cli(
        capsys, "bench", "train", "nin", *SMALL, "--batch", "4", "--repeats", "1", "--warmup", "0"
    )
    assert rc == 0 and "training step" in out.splitlines()[0]
    assert [line.split()[0] for line in out.splitlines()[3:5]] == ["eager", "convzoo"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["bench", "throughput", "resnet81", "--small-input"], "unknown model 'resnet81'"),
        (["bench", "throughput", "alexnet", "--input", "3x28x28"], "--small-input"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, match):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and match in lines[0], err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "throughput", "nin", "--threads", "0"],
        ["bench", "throughput", "nin", "--backend", "tensorrt"],
        ["bench", "throughput", "nin", "--input", "28"],
        ["bench", "train", "nin", "--variants", "some"],
        ["bench", "train", "nin", "--warmup", "-1"],
        ["bench", "train", "nin", "--width", "inf"],
        ["bench", "throughput", "nin", "--width", "nan"],
        ["bench", "fly", "nin"],
    ],
)
def test_argument_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1


def test_bench_without_a_subcommand_prints_help(capsys):
    rc, out, _ = run_cli(capsys, "bench")
    assert rc == 2 and "throughput" in out and "train" in out


def test_json_is_strict(capsys, monkeypatch):
    """A figure that is not a number (a zero-length timing) is null, never NaN/Infinity."""
    import json

    from convzoo import bench

    def fake(name, **kwargs):
        row = {"backend": "eager", "images_per_second": float("inf"), "speedup": float("nan")}
        return {"model": name, "rows": [row]}

    monkeypatch.setattr(bench, "bench_throughput", fake)
    assert main(["bench", "throughput", "nin", "--json"]) == 0
    text = capsys.readouterr().out

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON output")

    row = json.loads(text, parse_constant=refuse)["rows"][0]
    assert row["images_per_second"] is None and row["speedup"] is None
