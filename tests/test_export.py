"""convzoo.export: ONNX (checked with onnxruntime), TorchScript and safetensors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import convzoo
from convzoo.artifacts import CHECKPOINT_FORMAT as FORMAT
from convzoo.errors import CheckpointError, ConfigError
from convzoo.export import (
    ExportCheckError,
    checkpoint_metadata,
    default_output,
    export_checkpoint,
    export_onnx,
    export_safetensors,
    load_safetensors,
    read_onnx_metadata,
    read_safetensors_metadata,
)

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build_checkpoint(tmp_path, name: str, **family_options):
    """A checkpoint dict as `convzoo train` writes it, for a tiny random-weight model.

    The data entry names a folder that does not exist, so the ONNX check uses random input.
    """
    options = dict(num_classes=10, in_channels=1, small_input=True, width=0.125, **family_options)
    torch.manual_seed(0)
    model = convzoo.get_model(name, **options)
    # Non-trivial batch-norm statistics, so that eval mode visibly differs from training.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    ckpt = {
        "format": FORMAT,
        "model_name": name,
        "model_options": options,
        "model": model.state_dict(),
        "ema": None,
        "data": {
            "dataset": str(tmp_path / "no-such-dataset"),
            "data_dir": None,
            "classes": CLASSES,
            "mean": [0.286],
            "std": [0.353],
            "image_size": [28, 28],
            "resize": None,
            "in_channels": 1,
        },
        "config": {},
        "epoch": 1,
        "step": 1,
        "metrics": [],
        "best_val_accuracy": 0.5,
    }
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path, ckpt


def reference(ckpt: dict) -> nn.Module:
    model = convzoo.get_model(ckpt["model_name"], **ckpt["model_options"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name,options",
    [
        ("resnet18", {}),
        ("googlenet", {"aux_logits": True}),
        ("densenet121", {"block_config": [2, 2, 2, 2]}),
    ],
)
@pytest.mark.slow
def test_onnx_matches_pytorch_in_onnxruntime(tmp_path, name, options):
    import onnxruntime as ort

    path, ckpt = build_checkpoint(tmp_path, name, **options)
    out = export_checkpoint(path.parent.parent, "onnx")
    assert out == tmp_path / "run" / "model-best.onnx"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]  # no auxiliary heads
    model = reference(ckpt)
    for n in (1, 7):  # the batch axis is dynamic
        x = inputs(n)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    meta = read_onnx_metadata(out)
    assert meta["classes"] == CLASSES
    assert meta["mean"] == [0.286] and meta["std"] == [0.353]
    assert meta["model_name"] == name and meta["input_size"] == [1, 28, 28]


@pytest.mark.slow
def test_onnx_export_restores_the_callers_mode(tmp_path):
    model = convzoo.get_model("nin", num_classes=3, in_channels=1, small_input=True, width=0.125)
    model.train()
    export_onnx(model, tmp_path / "m.onnx", input_size=(1, 28, 28))
    assert model.training


class Noisy(nn.Module):
    """Not a function of its input: onnxruntime's random numbers differ from PyTorch's."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) + torch.rand(x.shape[0], 4)


def test_onnx_mismatch_is_an_internal_error_and_writes_nothing(tmp_path):
    out = tmp_path / "noisy.onnx"
    with pytest.raises(ExportCheckError, match="differs from PyTorch"):
        export_onnx(Noisy(), out, input_size=(1, 8, 8))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either


@pytest.mark.slow
def test_torchscript_loads_in_a_fresh_process(tmp_path):
    path, ckpt = build_checkpoint(tmp_path, "resnet18")
    out = export_checkpoint(path, "torchscript")
    assert out == tmp_path / "run" / "model-best.torchscript.pt"
    x = inputs(5)
    with torch.no_grad():
        want = reference(ckpt)(x)
    torch.save({"x": x, "want": want}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        extra = {{"convzoo.json": ""}}
        with torch.jit.optimized_execution(False):
            m = torch.jit.load({str(out)!r}, _extra_files=extra)
            io = torch.load({str(tmp_path / "io.pt")!r})
            got = m(io["x"])
        assert not hasattr(sys.modules.get("convzoo"), "get_model"), "convzoo was imported"
        print(json.dumps({{"max_diff": float((got - io["want"]).abs().max()),
                          "shape": list(got.shape),
                          "meta": json.loads(extra["convzoo.json"])}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [5, 10]
    assert result["max_diff"] < 1e-4
    assert result["meta"]["classes"] == CLASSES and result["meta"]["model_name"] == "resnet18"


@pytest.mark.parametrize(
    "name,options",
    [("googlenet", {"aux_logits": True}), ("densenet121", {"block_config": [2, 2, 2, 2]})],
)
@pytest.mark.slow
def test_safetensors_round_trip(tmp_path, name, options):
    path, ckpt = build_checkpoint(tmp_path, name, **options)
    out = export_checkpoint(path, "safetensors", tmp_path / "exported.safetensors")
    model = load_safetensors(out)
    assert not model.training
    x = inputs(4)
    with torch.no_grad():
        assert torch.equal(model(x), reference(ckpt)(x))
    meta = read_safetensors_metadata(out)
    assert meta["model_name"] == name
    assert meta["model_options"] == ckpt["model_options"]
    assert meta["classes"] == CLASSES and meta["mean"] == [0.286] and meta["std"] == [0.353]


def test_export_safetensors_of_a_plain_model(tmp_path):
    model = convzoo.get_model(
        "alexnet", num_classes=4, in_channels=3, small_input=True, width=0.125
    )
    meta = {
        "model_name": "alexnet",
        "model_options": {"num_classes": 4, "small_input": True, "width": 0.125},
    }
    export_safetensors(model, tmp_path / "a.safetensors", metadata=meta)
    back = load_safetensors(tmp_path / "a.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model.eval()(x))


def test_load_safetensors_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(CheckpointError, match="no such file"):
        load_safetensors(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_safetensors(junk)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="no convzoo model description"):
        load_safetensors(bare)


def test_output_paths(tmp_path):
    path, _ = build_checkpoint(tmp_path, "nin")
    # named after the weights it holds, beside the run's own files
    assert default_output(path, "onnx") == tmp_path / "run" / "model-best.onnx"
    last = path.with_name("last.pt")
    assert default_output(last, "torchscript") == tmp_path / "run" / "model-last.torchscript.pt"
    loose = tmp_path / "loose.pt"
    assert default_output(loose, "safetensors") == tmp_path / "model-loose.safetensors"
    # An existing directory gets the default name inside it.
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    assert export_checkpoint(path, "safetensors", outdir) == outdir / "model-best.safetensors"


def test_refuses_to_overwrite_the_input_checkpoint(tmp_path):
    path, _ = build_checkpoint(tmp_path, "nin")
    before = path.read_bytes()
    for fmt in ("onnx", "torchscript", "safetensors"):
        with pytest.raises(ConfigError, match="overwrite the input checkpoint"):
            export_checkpoint(path.parent.parent, fmt, path)
    assert path.read_bytes() == before


def test_bad_targets(tmp_path):
    with pytest.raises(CheckpointError):
        export_checkpoint(tmp_path / "nowhere", "onnx")
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        export_checkpoint(bogus, "onnx")
    path, _ = build_checkpoint(tmp_path, "nin")
    with pytest.raises(ConfigError, match="unknown export format"):
        export_checkpoint(path, "pdf")


def test_checkpoint_metadata_needs_the_data_entry():
    with pytest.raises(CheckpointError, match="data description"):
        checkpoint_metadata({"model_name": "nin", "model_options": {}})


@pytest.mark.parametrize(
    "name",
    ["config.json", "result.json", "metrics.jsonl", "model.safetensors", "checkpoints/last.pt"],
)
def test_never_writes_over_a_file_of_the_run(tmp_path, name):
    path, _ = build_checkpoint(tmp_path, "nin")
    run = path.parent.parent
    target = run / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"the run's own file")
    with pytest.raises(ConfigError, match="--out"):
        export_checkpoint(run, "safetensors", target)
    assert target.read_bytes() == b"the run's own file"


def test_a_plain_export_keeps_the_weights_training_wrote(tmp_path):
    path, _ = build_checkpoint(tmp_path, "nin")
    run = path.parent.parent
    (run / "model.safetensors").write_bytes(b"written by training")
    out = export_checkpoint(run, "safetensors")
    assert out == run / "model-best.safetensors"
    assert (run / "model.safetensors").read_bytes() == b"written by training"
    assert read_safetensors_metadata(out)["model_name"] == "nin"
