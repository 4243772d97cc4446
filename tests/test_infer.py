"""convzoo.infer: the fast and onnxruntime backends compute what the eager model does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import synthetic_images
from torch import nn

import convzoo
from convzoo.errors import ConfigError, ModelError
from convzoo.infer import (
    FastModel,
    FusedConv2d,
    OnnxRuntimeModel,
    ScaleShift,
    fold_batch_norm,
    fold_report,
    max_relative_error,
    measure_throughput,
    optimize,
    outputs_match,
)

# (name, family options): the six families' default models, plus the variants whose
# blocks the fast backend rewrites differently (BN GoogLeNet, bottleneck ResNet, the
# seed's plain DenseNet).
FAMILIES = [
    ("alexnet", {}),
    ("vgg11_bn", {}),
    ("nin", {}),
    ("googlenet", {}),
    ("googlenet", {"batch_norm": True}),
    ("resnet18", {}),
    ("resnet50", {}),
    ("densenet121", {}),
    ("densenet121", {"bottleneck": False}),
]


def images(n: int, seed: int = 0, size: int = 28) -> torch.Tensor:
    """Normalised (N, 1, size, size) images that look like the synthetic Fashion-MNIST."""
    labels = np.arange(n) % 10
    raw = torch.from_numpy(synthetic_images(labels, size, seed=seed)).float() / 255
    return ((raw - 0.2) / 0.3).unsqueeze(1)


def trained_statistics(model: nn.Module, size: int = 28, channels: int = 1) -> nn.Module:
    """``model`` in eval mode with batch-norm statistics from a few training-mode passes
    over images (not the initial mean 0, variance 1), and non-trivial BN affine weights."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0.0, 0.2, generator=gen)
    model.train()
    with torch.no_grad():
        for seed in range(3):
            x = images(16, seed=seed + 10, size=size)
            model(x if channels == 1 else x.expand(-1, channels, -1, -1).contiguous())
    return model.eval()


def tiny(name: str, **options) -> nn.Module:
    model = convzoo.get_model(
        name, num_classes=10, in_channels=1, small_input=True, width=0.125, **options
    )
    return trained_statistics(model)


def eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), FAMILIES)
def test_fast_and_onnxruntime_agree_with_eager(name, options):
    model = tiny(name, **options)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(6)
    ref = eager(model, x)
    fast = optimize(model, x, "fast")
    ort = optimize(model, x, "onnxruntime")
    assert isinstance(fast, FastModel) and isinstance(ort, OnnxRuntimeModel)
    other = images(3, seed=5)  # another batch size than the example's
    ref_other = eager(model, other)
    for runner in (fast, ort):
        got = runner(x)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert outputs_match(got, ref), (name, runner.backend, max_relative_error(got, ref))
        got = runner(other)
        assert outputs_match(got, ref_other), max_relative_error(got, ref_other)
    # The caller's model is untouched: same weights and statistics, still in eval mode.
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert not model.training
    assert not any(isinstance(m, FusedConv2d | ScaleShift) for m in model.modules())


@pytest.mark.slow
def test_what_fast_folds_per_family():
    x = images(2)
    report = {name: fold_report(optimize(tiny(name), x)) for name in ("resnet18", "vgg11_bn")}
    # Every BN of ResNet and VGG-BN follows a convolution: all folded.
    assert report["resnet18"]["batch_norms_folded"] == 20 == report["resnet18"]["convolutions"]
    assert report["resnet18"]["batch_norms_left"] == 0
    assert (
        report["vgg11_bn"]["batch_norms_folded"] == 8
        and report["vgg11_bn"]["batch_norms_left"] == 0
    )
    # DenseNet-BC: the BN after each bottleneck's 1x1 conv is folded (58 layers); the
    # pre-activation BN before each 1x1 conv, in the transitions and the head cannot be.
    dense = optimize(tiny("densenet121"), x)
    r = fold_report(dense)
    assert r["batch_norms_folded"] == 58 and r["batch_norms_left"] == 58 + 3 + 1
    if torch.backends.mkldnn.is_available():
        assert r["prepacked"] == r["convolutions"]
    # Transition: the 1x1 convolution runs after the 2x2 average pool.
    for seq in dense.modules():
        if isinstance(seq, nn.Sequential):
            kinds = [type(m) for m in seq]
            if nn.AvgPool2d in kinds:
                assert kinds[kinds.index(nn.AvgPool2d) + 1] is FusedConv2d
    # No dropout is left in the inference copy.
    assert not any(isinstance(m, nn.Dropout) for m in optimize(tiny("alexnet"), x).modules())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_faithful_form_agrees(name):
    # The 224 px form's stem (7x7 conv, BN, ReLU, max pool), at a small size and width.
    model = convzoo.get_model(name, num_classes=10, in_channels=3, width=0.125)
    model = trained_statistics(model, size=64, channels=3)
    x = images(2, size=64).expand(-1, 3, -1, -1).contiguous()
    got, ref = optimize(model, x)(x), eager(model, x)
    assert outputs_match(got, ref), max_relative_error(got, ref)


def test_fold_batch_norm_matches_conv_then_bn():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True).double()
    bn = nn.BatchNorm2d(5).double()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.2, 3.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    bn.eval()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    w, b = fold_batch_norm(conv, bn)
    expected = bn(conv(x)).detach()
    got = nn.functional.conv2d(x, w, b, padding=1)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    fused = FusedConv2d(conv, bn, relu=True)
    assert torch.allclose(fused(x), expected.relu(), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_a_model_in_training_mode_is_refused():
    model = tiny("resnet18").train()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ModelError, match="training mode.*model.eval"):
        optimize(model, images(2))
    with pytest.raises(ModelError, match="training mode"):
        optimize(model, images(2), "onnxruntime")
    assert model.training  # left as it was
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    fast = optimize(model.eval(), images(2))
    fast.eval()  # harmless
    with pytest.raises(ModelError, match="inference only"):
        fast.train()


@pytest.mark.slow
def test_bad_arguments():
    model = tiny("nin")
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        optimize(model, images(2), "tensorrt")
    with pytest.raises(ModelError, match=r"\(N, C, H, W\)"):
        optimize(model, torch.zeros(1, 28, 28))
    with pytest.raises(ConfigError, match="compile"):
        optimize(model, images(2), compile="sometimes")
    with pytest.raises(ModelError, match="nn.Module"):
        optimize(lambda x: x, images(2))
    # A bad batch at call time gets the model's own message.
    with pytest.raises(ModelError, match="1-channel"):
        optimize(model, images(2))(torch.zeros(2, 3, 28, 28))


@pytest.mark.slow
def test_eager_backend_is_the_model_itself():
    model = tiny("nin")
    assert optimize(model, images(2), "eager") is model


@pytest.mark.slow
def test_evaluate_accepts_optimized_models():
    from convzoo.evaluate import evaluate

    model = tiny("resnet18")
    x = images(20)
    y = torch.arange(20) % 10
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    ref = evaluate(model, batches, 10)
    for backend in ("fast", "onnxruntime"):
        res = evaluate(optimize(model, x[:8], backend), batches, 10, tta=False)
        assert res.confusion == ref.confusion
        assert res.loss == pytest.approx(ref.loss, rel=1e-4)


@pytest.mark.slow
def test_measure_throughput_counts_and_restores_modes():
    calls = []

    def fn(x):
        calls.append((x.shape[0], torch.is_inference_mode_enabled()))
        return x

    result = measure_throughput(fn, torch.zeros(4, 1, 2, 2), repeats=3, warmup=2)
    assert len(calls) == 5 and all(inference for _, inference in calls)
    assert result["batch_size"] == 4 and result["repeats"] == 3 and result["warmup"] == 2
    assert len(result["times_s"]) == 3
    assert result["latency_min_ms"] <= result["latency_ms"] <= result["latency_max_ms"]
    assert result["images_per_second"] == pytest.approx(4 / (result["latency_ms"] / 1e3))
    model = tiny("nin").train()
    measure_throughput(model, images(2), repeats=1, warmup=0)
    assert model.training  # eval mode only for the measurement
    with pytest.raises(ConfigError, match="repeats"):
        measure_throughput(fn, torch.zeros(1), repeats=0)
    with pytest.raises(ConfigError, match="warmup"):
        measure_throughput(fn, torch.zeros(1), warmup=-1)


def test_outputs_match_is_relative_with_a_floor():
    ref = torch.tensor([[10.0, -0.001, 3.0]])
    assert outputs_match(ref * (1 + 5e-5), ref)
    assert not outputs_match(ref * (1 + 5e-4), ref)
    # Small entries may be off by up to 1e-5 of the largest one.
    assert outputs_match(ref + torch.tensor([[0.0, 5e-5, 0.0]]), ref)
    assert not outputs_match(ref + torch.tensor([[0.0, 5e-3, 0.0]]), ref)
    assert not outputs_match(ref[:, :2], ref)


# -- convzoo eval and predict: every backend gives the same answers ------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory of a one-epoch resnet18 (width 1/8) on a synthetic Fashion-MNIST."""
    from conftest import write_idx_dataset

    from convzoo.cli import main

    root = tmp_path_factory.mktemp("infer-run")
    data = write_idx_dataset(root / "data", n_train=120, n_test=40)
    run = root / "run"
    argv = ["train", "resnet18", "--width", "0.125", "--data-dir", str(data), "--val-size", "20"]
    argv += ["--epochs", "1", "--batch-size", "50", "--out", str(run), "--quiet"]
    assert main(argv) == 0
    return run, data


def cli_json(capsys, *argv) -> dict:
    import json

    from convzoo.cli import main

    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_eval_backends_agree(trained_run, capsys):
    run, _ = trained_run
    results = {
        b: cli_json(capsys, "eval", run, "--json", "--backend", b, "--batch-size", "16")
        for b in ("eager", "fast", "onnxruntime")
    }
    default = cli_json(capsys, "eval", run, "--json", "--batch-size", "16")
    assert default["backend"] == "fast"
    ref = results["eager"]
    for b, res in [*results.items(), ("default", default)]:
        assert res["confusion"] == ref["confusion"], b
        assert res["accuracy"] == ref["accuracy"] and res["num_samples"] == 40
        assert res["loss"] == pytest.approx(ref["loss"], rel=1e-4), b
    tta = {
        b: cli_json(capsys, "eval", run, "--json", "--tta", "--backend", b)
        for b in ("eager", "fast")
    }
    assert tta["fast"]["confusion"] == tta["eager"]["confusion"]
    assert tta["fast"]["loss"] == pytest.approx(tta["eager"]["loss"], rel=1e-4)


@pytest.mark.slow
def test_predict_backends_agree(trained_run, capsys, tmp_path):
    from PIL import Image

    from convzoo.data.datasets import load_dataset

    run, data = trained_run
    ds = load_dataset("fashion-mnist", data)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(ds.test_images[i, 0].numpy(), "L").save(paths[-1])
    preds = {
        b: cli_json(capsys, "predict", run, *paths, "--topk", "10", "--json", "--backend", b)
        for b in ("eager", "fast", "onnxruntime")
    }
    assert preds["fast"]["backend"] == "fast"
    for b in ("fast", "onnxruntime"):
        for mine, ref in zip(preds[b]["predictions"], preds["eager"]["predictions"], strict=True):
            got = {e["index"]: e["probability"] for e in mine["top"]}
            want = {e["index"]: e["probability"] for e in ref["top"]}
            assert got.keys() == want.keys()
            assert all(got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6) for k in want)
            assert mine["top"][0]["index"] == ref["top"][0]["index"]


def test_unknown_backend_is_an_argument_error(trained_run, capsys):
    from convzoo.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", str(trained_run[0]), "--backend", "tensorrt"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--backend" in err and len(err.strip().splitlines()) == 1
