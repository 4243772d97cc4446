"""Pretrained weights: name tables, loading, adaptation, conversion and the refusals.

The key-and-shape fixtures in tests/data/pretrained/ were written once from torchvision
and timm (see its README); the fake files here are built from them, or from convzoo's
own models renamed through the tables. No network.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import convzoo
from convzoo.cli import main
from convzoo.errors import CheckpointError
from convzoo.pretrained import adapt_input_conv, table, to_source

FIXTURES = Path(__file__).parent / "data" / "pretrained"
NAMES = [
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    *(f"densenet{d}" for d in (121, 161, 169, 201)),
]
RESHAPED = {"pre_logits.fc1.weight", "pre_logits.fc2.weight"}


def fixture(source: str, name: str) -> dict[str, list[int]]:
    return json.loads((FIXTURES / f"{source}-{name}.json").read_text())["state_dict"]


@functools.cache
def meta_model(name: str) -> torch.nn.Module:
    """The faithful model on the meta device (shapes only), built once for both sources."""
    with torch.device("meta"):
        return convzoo.get_model(name)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
@pytest.mark.parametrize("name", NAMES)
def test_table_covers_every_tensor(name, source):
    """Every tensor of the library's model has exactly one convzoo tensor, of its shape
    (timm's VGG: the same numbers as a convolution)."""
    theirs = fixture(source, name)
    model = meta_model(name)
    mapping = table(name, model, source)
    assert sorted(mapping.values()) == sorted(theirs)
    own = model.state_dict()
    for ours, their_name in mapping.items():
        shape = list(own[ours].shape)
        if their_name in RESHAPED:
            assert own[ours].numel() == torch.Size(theirs[their_name]).numel()
        else:
            assert shape == theirs[their_name], (ours, their_name)


def fake_file(tmp_path: Path, source: str, name: str, file_name: str | None = None) -> Path:
    """A state dict of random tensors with the fixture's names and shapes."""
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) if s else torch.tensor(3)
             for k, s in fixture(source, name).items()}  # fmt: skip
    path = tmp_path / (file_name or f"{source}-{name}.pth")
    torch.save(state, path)
    return path


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_fake_library_file_loads_through_the_table(tmp_path, source):
    path = fake_file(tmp_path, source, "resnet18")
    model = convzoo.get_model("resnet18", weights=path)
    theirs = torch.load(path, weights_only=True)
    assert torch.equal(model.stem[0].weight, theirs["conv1.weight"])
    assert torch.equal(model.layer2[0].shortcut[0].weight, theirs["layer2.0.downsample.0.weight"])
    assert torch.equal(model.head[2].bias, theirs["fc.bias"])
    assert model.pretrained.source == source or source == "timm"  # same names in both
    assert model.pretrained.loaded == len(theirs)


def test_densenet_legacy_names_load(tmp_path):
    """torchvision's published DenseNet files say "norm.1" for "norm1"."""
    state = torch.load(fake_file(tmp_path, "torchvision", "densenet121"), weights_only=True)
    legacy = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v
              for k, v in state.items() if not k.endswith("num_batches_tracked")}  # fmt: skip
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    model = convzoo.get_model("densenet121", weights=path)
    assert torch.equal(model.blocks[0].net[0][0][0].weight,
                       state["features.denseblock1.denselayer1.norm1.weight"])  # fmt: skip


@pytest.mark.parametrize(
    ("name", "source"),
    [("resnet18", "torchvision"), ("vgg11_bn", "timm"), ("densenet121", "torchvision")],
)
def test_convzoo_to_library_to_convzoo_is_identical(tmp_path, name, source):
    options = {"width": 0.125} if name.startswith("vgg") else {}
    ours = convzoo.get_model(name, **options)
    path = tmp_path / "theirs.pth"
    torch.save(to_source(ours, name, source), path)
    back = convzoo.get_model(name, **options, weights=path, weights_source=source)
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_convert_both_ways(tmp_path, capsys):
    src = fake_file(tmp_path, "torchvision", "resnet18")
    out = tmp_path / "resnet18.safetensors"
    assert main(["weights", "convert", str(src), str(out), "--from", "torchvision",
                 "--model", "resnet18"]) == 0  # fmt: skip
    back = tmp_path / "back.pth"
    assert main(["weights", "convert", str(out), str(back), "--to", "torchvision"]) == 0
    a, b = torch.load(src, weights_only=True), torch.load(back, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- adaptation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    model = convzoo.get_model("resnet18")
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = folder / "resnet18-tv.pth"
    torch.save(to_source(model, "resnet18"), path)
    return path


def test_other_num_classes_gets_a_fresh_head(resnet18_file):
    model = convzoo.get_model("resnet18", num_classes=7, weights=resnet18_file)
    assert model.head[2].weight.shape == (7, 512)
    assert model.pretrained.fresh_head
    theirs = torch.load(resnet18_file, weights_only=True)
    assert torch.equal(model.layer4[1].conv2.weight, theirs["layer4.1.conv2.weight"])


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_in_channels_adaptation_shapes(resnet18_file, channels):
    model = convzoo.get_model("resnet18", in_channels=channels, weights=resnet18_file)
    assert model.stem[0].weight.shape == (64, channels, 7, 7)
    assert "RGB kernels" in model.pretrained.line()


def test_gray_model_equals_rgb_model_on_repeated_image(resnet18_file, one_thread):
    rgb = convzoo.get_model("resnet18", weights=resnet18_file).eval()
    gray = convzoo.get_model("resnet18", in_channels=1, weights=resnet18_file).eval()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)


def test_adapt_input_conv_rule():
    w = torch.randn(8, 3, 3, 3)
    torch.testing.assert_close(adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    five = adapt_input_conv(w, 5)
    torch.testing.assert_close(five, torch.cat([w, w[:, :2]], 1) * 3 / 5)
    six = adapt_input_conv(w, 6)  # a multiple of 3: equal channels give what RGB gives
    x = torch.rand(1, 1, 6, 6)
    torch.testing.assert_close(
        torch.conv2d(x.repeat(1, 6, 1, 1), six), torch.conv2d(x.repeat(1, 3, 1, 1), w)
    )


def test_small_input_keeps_what_fits(resnet18_file):
    model = convzoo.get_model("resnet18", small_input=True, num_classes=10, weights=resnet18_file)
    report = model.pretrained
    assert report.reinitialised == ["stem.0.weight"]
    assert "re-initialised stem.0" in report.line()
    theirs = torch.load(resnet18_file, weights_only=True)
    assert torch.equal(model.stem[1].weight, theirs["bn1.weight"])


def test_small_input_densenet_reports_unused_stem_norm(tmp_path):
    model = convzoo.get_model("densenet121", width=0.25)
    path = tmp_path / "d.pth"
    torch.save(to_source(model, "densenet121"), path)
    small = convzoo.get_model("densenet121", width=0.25, small_input=True, weights=path)
    assert {k.rsplit(".", 1)[0] for k in small.pretrained.unused} == {"features.norm0"}


# -- refusals: one line, exit 2 ----------------------------------------------------------


def convert(tmp_path, path, model="resnet18") -> list[str]:
    return ["weights", "convert", str(path), str(tmp_path / "out.safetensors"),
            "--from", "torchvision", "--model", model]  # fmt: skip


def one_line_exit_2(argv, capsys, *words) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_wrong_hash_prefix_is_refused(tmp_path, capsys, resnet18_file):
    path = tmp_path / "resnet18-deadbeef.pth"
    path.write_bytes(resnet18_file.read_bytes())
    one_line_exit_2(convert(tmp_path, path), capsys, "SHA-256", "deadbeef")


def test_right_hash_prefix_is_accepted(tmp_path, resnet18_file):
    import hashlib

    digest = hashlib.sha256(resnet18_file.read_bytes()).hexdigest()[:8]
    path = tmp_path / f"resnet18-{digest}.pth"
    path.write_bytes(resnet18_file.read_bytes())
    assert convzoo.get_model("resnet18", weights=path).pretrained.loaded > 0


def test_file_of_another_model_is_refused(tmp_path, capsys):
    state = {k: torch.zeros(1) for k in fixture("torchvision", "resnet34")}
    path = tmp_path / "resnet34-b627a593.pth"
    torch.save(state, path)
    os.environ.pop("TORCH_HOME", None)
    # (the name's hash is not the file's: checked first, so test the key check apart)
    with pytest.raises(CheckpointError, match="SHA-256"):
        convzoo.get_model("resnet18", weights=path)
    other = tmp_path / "theirs.pth"
    torch.save(state, other)
    one_line_exit_2(convert(tmp_path, other), capsys, "do not fit resnet18", "unexpected layer1.2")


def test_truncated_file_is_refused(tmp_path, capsys, resnet18_file):
    path = tmp_path / "cut.pth"
    path.write_bytes(resnet18_file.read_bytes()[:200_000])
    one_line_exit_2(convert(tmp_path, path), capsys, "truncated or corrupt")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": _RunsCode()}))
    err = one_line_exit_2(convert(tmp_path, path), capsys, "arbitrary code")
    assert "pwned" not in err + capsys.readouterr().out


def test_torchvision_file_absent_names_file_and_url(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    argv = convert(tmp_path, "torchvision")
    one_line_exit_2(argv, capsys, "resnet18-f37072fd.pth",
                    "https://download.pytorch.org/models/resnet18-f37072fd.pth")  # fmt: skip


def test_torchvision_file_found_in_hub_cache(tmp_path, monkeypatch, resnet18_file):
    import hashlib

    from convzoo.pretrained import files

    digest = hashlib.sha256(resnet18_file.read_bytes()).hexdigest()[:8]
    monkeypatch.setitem(files.TORCHVISION_FILES, "resnet18", (f"resnet18-{digest}.pth",))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / f"resnet18-{digest}.pth").write_bytes(resnet18_file.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert convzoo.get_model("resnet18", weights="torchvision").pretrained.loaded == 122


@pytest.mark.parametrize(("model", "why"), [("googlenet", "5x5"), ("alexnet", "one weird trick")])
def test_families_that_differ_are_refused_with_the_reason(
    tmp_path, capsys, resnet18_file, model, why
):
    one_line_exit_2(convert(tmp_path, resnet18_file, model), capsys, why)


def test_convert_needs_model(tmp_path, capsys, resnet18_file):
    argv = ["weights", "convert", str(resnet18_file), str(tmp_path / "o"), "--from", "timm"]
    one_line_exit_2(argv, capsys, "--model")


def test_to_torchvision_refuses_a_library_file(tmp_path, capsys, resnet18_file):
    argv = [
        "weights",
        "convert",
        str(resnet18_file),
        str(tmp_path / "o.pth"),
        "--to",
        "torchvision",
    ]
    one_line_exit_2(argv, capsys, "not a convzoo file")


def test_missing_file(tmp_path, capsys):
    one_line_exit_2(convert(tmp_path, tmp_path / "nope.pth"), capsys, "no such file")


# -- training from pretrained weights ----------------------------------------------------

TINY = ["--small-input", "--width", "0.125", "--batch-size", "32", "--val-size", "20",
        "--threads", "1", "--quiet", "--recipe", "none"]  # fmt: skip


def test_train_pretrained_missing_path_is_one_line(
    tmp_path, capsys, tiny_fashion_mnist, monkeypatch
):
    monkeypatch.setenv("CONVZOO_NO_BUSY_CHECK", "1")
    argv = ["train", "resnet18", *TINY, "--epochs", "1", "--pretrained", str(tmp_path / "nope"),
            "--out", str(tmp_path / "run")]  # fmt: skip
    one_line_exit_2(argv, capsys, "nope")


@pytest.mark.parametrize(("flag", "value"), [("--backbone-lr-scale", "0"),
                                             ("--freeze-epochs", "-1"), ("--normalize", "x")])  # fmt: skip
def test_bad_finetuning_options(capsys, flag, value):
    with pytest.raises(SystemExit) as stop:
        main(["train", "resnet18", flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and err.count("\n") == 1


@pytest.mark.slow
def test_finetune_from_a_run_with_time_budget(tmp_path, capsys, tiny_fashion_mnist, monkeypatch):
    """A run's weights start another run: frozen backbone for an epoch, lower backbone
    learning rate, frozen batch-norm statistics, inside a time budget."""
    import time

    from convzoo.cli import common

    monkeypatch.setenv("CONVZOO_NO_BUSY_CHECK", "1")
    monkeypatch.setattr(common, "process_start", time.perf_counter)  # not pytest's start
    first = tmp_path / "first"
    assert main(["train", "resnet18", *TINY, "--epochs", "1", "--out", str(first)]) == 0
    second = tmp_path / "second"
    argv = ["train", "resnet18", *TINY[:-3], "--recipe", "none", "--pretrained", str(first),
            "--freeze-epochs", "1", "--backbone-lr-scale", "0.1", "--freeze-bn",
            "--normalize", "imagenet", "--time-budget", "15s", "--out", str(second)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "pretrained:" in err and "backbone frozen for 1 epoch" in err
    result = json.loads((second / "result.json").read_text())
    assert result["test_accuracy"] is not None
    config = json.loads((second / "config.json").read_text())
    assert config["pretrained"] == str(first) and config["backbone_lr_scale"] == 0.1
