"""convzoo.lowp: the bf16 and int8 backends, the accuracy gate, and the CPU's precisions.

Nothing here is timed, and every test passes on any x86 CPU: without native bf16 or
VNNI the kernels are slower, not different in kind, and int8 then uses reduce_range.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import convzoo
import convzoo.infer
import convzoo.lowp
from convzoo.cli import main
from convzoo.errors import ConfigError, ModelError
from convzoo.infer import load_trained, optimize, prepare_backend
from convzoo.lowp import (
    AccuracyGateError,
    Bf16Model,
    calibration_batch,
    check_gate,
    cpu_precisions,
    describe_precisions,
    held_out,
    measure_gate,
    normalised_batches,
)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A resnet18 (width 1/4) trained for two epochs on 4000 real Fashion-MNIST images,
    with a 1000-image validation split (about 78 % accurate)."""
    from conftest import IDX_NAMES, REAL_FASHION_MNIST

    if not all((REAL_FASHION_MNIST / f"{n}.gz").is_file() for n in IDX_NAMES.values()):
        pytest.skip(f"the real Fashion-MNIST is not in {REAL_FASHION_MNIST}")
    run = tmp_path_factory.mktemp("lowp") / "run"
    argv = ["train", "resnet18", "--width", "0.25", "--data-dir", str(REAL_FASHION_MNIST)]
    argv += ["--limit-train", "4000", "--val-size", "1000", "--epochs", "2"]
    argv += ["--batch-size", "100", "--recipe", "none", "--out", str(run), "--quiet"]
    assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def real(real_run):
    """(model, checkpoint, held-out images, calibration batch, validation batches)."""
    _, ckpt, model, _ = load_trained(real_run, device="cpu")
    held = held_out(ckpt)
    data = ckpt["data"]
    val = normalised_batches(held.val_images, held.val_labels, data, "cpu", 250)
    return model, ckpt, held, calibration_batch(held, data), val


# -- on a trained model ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.realdata
def test_held_out_is_the_runs_validation_split(real_run, real):
    model, _, held, calibration, val = real
    result = json.loads((real_run / "result.json").read_text())
    assert len(held.val_labels) == 1000 and len(calibration) == 512
    figures = measure_gate(model, model, val)
    # The float32 model scores on it exactly what training measured on its split.
    assert figures["reference_accuracy"] == pytest.approx(result["best_val_accuracy"], abs=1e-9)
    assert figures["agreement"] == 1.0 and figures["drop_points"] == 0.0


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize(("backend", "tolerance"), [("bf16", 0.03), ("int8", 0.08)])
def test_bf16_and_int8_agree_with_float32(real, backend, tolerance):
    model, _, _, calibration, val = real
    state = copy.deepcopy(model.state_dict())
    x = next(iter(val))[0]
    runner = optimize(model, x, backend, calibration=calibration)
    with torch.no_grad():
        ref, got = model(x), runner(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # Close: within a few percent of the largest logit, nowhere near equal to 1e-4.
    assert float((got - ref).abs().max()) <= tolerance * float(ref.abs().max())
    figures = measure_gate(model, runner, val)
    assert figures["images"] == 1000
    assert figures["agreement"] >= 0.99, figures
    # The original model is untouched: same weights, same modules, eval mode.
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not any(isinstance(m, convzoo.infer.FusedConv2d) for m in model.modules())


@pytest.mark.slow
@pytest.mark.realdata
def test_the_gate_refuses_int8_calibrated_on_blank_images(real):
    model, ckpt, held, _, val = real
    blank = torch.zeros_like(held.calibration_images)
    calibration = next(iter(normalised_batches(blank, None, ckpt["data"], "cpu", len(blank))))[0]
    runner = optimize(model, next(iter(val))[0], "int8", calibration=calibration)
    figures = measure_gate(model, runner, val)
    assert figures["drop_points"] > 0.2
    with pytest.raises(AccuracyGateError, match=r"int8 backend loses .* points on 1000"):
        check_gate("int8", figures, 0.2)
    assert check_gate("int8", figures, 100.0)["passed"]


@pytest.mark.slow
@pytest.mark.realdata
def test_eval_int8_json_names_the_backend_and_its_drop(real_run, capsys):
    rc, out, err = run_cli(
        capsys, "eval", real_run, "--backend", "int8", "--max-accuracy-drop", "100", "--json"
    )
    assert rc == 0, err
    res = json.loads(out)
    assert res["backend"] == "int8" and res["requested_backend"] == "int8"
    gate = res["accuracy_gate"]
    assert gate["backend"] == "int8" and gate["images"] == 1000 and gate["passed"]
    assert gate["agreement"] >= 0.99 and gate["max_drop_points"] == 100.0
    exact = json.loads(run_cli(capsys, "eval", real_run, "--json")[1])
    assert exact["backend"] == "fast" and exact["accuracy_gate"] is None
    assert abs(res["accuracy"] - exact["accuracy"]) <= 0.01


@pytest.mark.slow
@pytest.mark.realdata
def test_eval_predict_and_export_refuse_a_model_that_fails_the_gate(
    real_run, capsys, monkeypatch, tmp_path
):
    def blank(held, data):
        images = torch.zeros_like(held.calibration_images)
        return next(iter(normalised_batches(images, None, data, "cpu", len(images))))[0]

    monkeypatch.setattr(convzoo.infer, "calibration_batch", blank)
    monkeypatch.setattr(convzoo.lowp, "calibration_batch", blank)
    from PIL import Image

    image = tmp_path / "shoe.png"
    Image.fromarray(torch.full((28, 28), 128, dtype=torch.uint8).numpy(), "L").save(image)
    out = tmp_path / "m.int8.onnx"
    for argv in (
        ["eval", real_run, "--backend", "int8"],
        ["predict", real_run, image, "--backend", "int8"],
        ["export", real_run, "--format", "onnx", "--int8", "--out", out],
    ):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2, (argv, err)
        assert "int8 backend loses" in err and "--max-accuracy-drop 0.2" in err
        assert "top-1 agreement" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_export_int8_writes_the_model_and_its_figures(real_run, capsys, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "m.int8.onnx"
    rc, stdout, err = run_cli(
        capsys, "export", real_run, "--format", "onnx", "--int8", "--out", out,
        "--max-accuracy-drop", "100",
    )  # fmt: skip
    assert rc == 0, err
    assert "top-1 agreement with float32" in stdout
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["model_file"] == "m.int8.onnx" and side["model_name"] == "resnet18"
    assert side["quantization"]["format"] == "QDQ"
    assert side["quantization"]["reduce_range"] == (not cpu_precisions()["int8_native"])
    assert side["calibration"]["images"] == 512 and "training" in side["calibration"]["from"]
    assert side["accuracy_gate"]["passed"] and side["accuracy_gate"]["agreement"] >= 0.99
    from convzoo.export import read_onnx_metadata

    meta = read_onnx_metadata(out)
    assert meta["model_name"] == "resnet18" and meta["int8"]["accuracy_gate"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert any(n.op_type == "QuantizeLinear" for n in _graph_nodes(out))
    _, ckpt, model, _ = load_trained(real_run, device="cpu")
    held = held_out(ckpt)
    x, _ = next(iter(normalised_batches(held.val_images, held.val_labels, ckpt["data"])))
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        agree = (got.argmax(1) == model(x).argmax(1)).float().mean()
    assert float(agree) >= 0.98


def _graph_nodes(path):
    import onnx

    return onnx.load(str(path)).graph.node


@pytest.mark.slow
@pytest.mark.realdata
def test_auto_takes_a_gated_backend_or_fast(real_run, real):
    model, ckpt, _, _, val = real
    x = next(iter(val))[0]
    runner, info = prepare_backend(model, ckpt, torch.device("cpu"), x, "auto")
    assert info["requested"] == "auto" and set(info["timings"]) == {"fast", "bf16", "int8"}
    assert getattr(runner, "backend", None) == info["backend"]
    if info["backend"] == "fast":
        assert info["accuracy_gate"] is None
    else:  # chosen only when faster than "fast" here, and after passing the gate
        assert info["timings"][info["backend"]] > info["timings"]["fast"]
        assert info["accuracy_gate"]["passed"]
        assert info["accuracy_gate"]["backend"] == info["backend"]


# -- without a trained model ------------------------------------------------------------------


def tiny() -> torch.nn.Module:
    model = convzoo.get_model(
        "resnet18", num_classes=10, in_channels=1, small_input=True, width=0.125
    )
    return model.eval()


@pytest.mark.slow
def test_training_mode_is_refused_as_fast_refuses_it():
    model = tiny().train()
    x = torch.randn(4, 1, 28, 28)
    for backend in ("bf16", "int8"):
        with pytest.raises(ModelError, match="training mode.*model.eval"):
            optimize(model, x, backend, calibration=x)
    assert model.training
    bf16 = optimize(model.eval(), x, "bf16")
    assert isinstance(bf16, Bf16Model)
    bf16.eval()
    with pytest.raises(ModelError, match="inference only"):
        bf16.train()


def test_int8_needs_calibration_images():
    with pytest.raises(ConfigError, match="calibration"):
        optimize(tiny(), torch.randn(2, 1, 28, 28), "int8")


def test_gate_threshold_and_figures():
    figures = {
        "images": 500,
        "agreement": 0.99,
        "reference_accuracy": 0.9,
        "accuracy": 0.898,
        "drop_points": 0.2,
    }
    ok = check_gate("bf16", figures, 0.2)
    assert ok["passed"] and ok["backend"] == "bf16" and ok["max_drop_points"] == 0.2
    with pytest.raises(AccuracyGateError, match=r"loses 0\.20 accuracy points on 500"):
        check_gate("bf16", figures, 0.1)
    with pytest.raises(ConfigError, match="max-accuracy-drop"):
        check_gate("bf16", figures, -1.0)


def test_measure_gate_counts_agreement_and_accuracy():
    class Fixed(torch.nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.classes = classes

        def forward(self, x):
            return torch.nn.functional.one_hot(self.classes, 3).float()

    labels = torch.tensor([0, 1, 2, 2])
    ref, cand = Fixed(torch.tensor([0, 1, 2, 0])), Fixed(torch.tensor([0, 1, 1, 0]))
    figures = measure_gate(ref, cand, [(torch.zeros(4, 1), labels)])
    assert figures == {
        "images": 4,
        "agreement": 0.75,
        "reference_accuracy": 0.75,
        "accuracy": 0.5,
        "drop_points": 25.0,
    }


def test_cpu_precisions_follow_torchs_capabilities(monkeypatch):
    info = cpu_precisions()
    assert info["paths"] and isinstance(info["cpu"], str)
    assert info["bf16_native"] == (info["flags"]["avx512_bf16"] or info["flags"]["amx_bf16"])
    avx2_only = {"avx2": True, "avx512_f": False, "avx512_bf16": False, "avx512_vnni": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: avx2_only)
    info = cpu_precisions()
    assert info["paths"] == ["AVX2 only"]
    assert not info["bf16_native"] and not info["int8_native"]
    assert "AVX2 only" in describe_precisions(info) and "bf16 emulated" in describe_precisions(info)
    amx = {"avx2": True, "avx512_f": True, "amx_bf16": True, "amx_int8": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: amx)
    info = cpu_precisions()
    assert info["paths"] == ["AMX-BF16", "AMX-INT8"] and info["int8_native"]


def test_cli_argument_errors(capsys, tmp_path):
    for argv in (
        ["eval", tmp_path, "--max-accuracy-drop", "-1"],
        ["eval", tmp_path, "--backend", "int4"],
        ["predict", tmp_path, "x.png", "--max-accuracy-drop", "nan"],
    ):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        assert exc.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_export_int8_is_onnx_only(capsys, tmp_path):
    from convzoo.export import export_checkpoint

    with pytest.raises(ConfigError, match="--int8 is an ONNX export"):
        export_checkpoint(tmp_path, "torchscript", int8=True)
