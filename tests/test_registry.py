"""The model registry and the `convzoo list` / `convzoo summary` commands."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import by_weight

from convzoo import get_model, list_models, register_model, registry
from convzoo.cli import main
from convzoo.errors import ModelError

# One intra-op thread: these models are tiny, and the machine may be shared.
pytestmark = pytest.mark.usefixtures("one_thread")


NAMES = [
    "alexnet",
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "nin",
    "googlenet",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "densenet121", "densenet161", "densenet169", "densenet201",
]  # fmt: skip


def test_registered_names():
    assert list_models() == sorted(NAMES)
    assert list_models("resnet*") == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert list_models("vgg1?_bn") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    assert list_models("nothing*") == []


@pytest.mark.parametrize("name", by_weight(NAMES))
def test_models_carry_name_and_form(name):
    with torch.device("meta"):
        model = get_model(name, small_input=True, num_classes=10, in_channels=1)
    assert model.name == name
    assert model.small_input is True
    assert isinstance(model.min_input_size, int) and model.min_input_size >= 1


def test_unknown_name_names_the_closest_matches():
    with pytest.raises(ValueError, match="did you mean resnet18") as err:
        get_model("resnt18")
    assert isinstance(err.value, ModelError)
    with pytest.raises(ValueError, match="densenet121"):
        get_model("densenet12")
    with pytest.raises(ValueError, match="convzoo list"):
        get_model("inception_v3")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_num_classes_must_be_a_positive_integer(bad):
    with pytest.raises(ModelError, match="num_classes must be a positive integer"):
        get_model("resnet18", num_classes=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.0])
def test_in_channels_must_be_a_positive_integer(bad):
    with pytest.raises(ModelError, match="in_channels"):
        get_model("resnet18", in_channels=bad)


@pytest.mark.parametrize("bad", [0, -0.5, math.nan, math.inf, True, "1"])
def test_width_must_be_a_positive_finite_number(bad):
    with pytest.raises(ModelError, match="width must be a positive number"):
        get_model("resnet18", width=bad)


def test_unknown_option_is_a_model_error():
    with pytest.raises(ModelError, match="vgg11: .*unexpected keyword argument 'depth'"):
        get_model("vgg11", depth=3)


def test_registering_a_name_twice_is_an_error(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model(name="tiny_test_model")
    def tiny(**options):
        return torch.nn.Identity()

    assert "tiny_test_model" in list_models()
    with pytest.raises(ValueError, match="'tiny_test_model' is already registered"):
        register_model(tiny, name="tiny_test_model")
    with pytest.raises(ValueError, match="'resnet18' is already registered"):

        @register_model
        def resnet18(**options):
            return torch.nn.Identity()


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["model", "params"]
    rows = dict(line.split() for line in out[1:])
    assert sorted(rows) == sorted(NAMES)
    assert rows["resnet18"] == "11,689,512"
    assert rows["googlenet"] == "6,998,552"
    assert main(["list", "vgg16*", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:]] == ["vgg16", "vgg16_bn"]


def test_cli_summary_small_input(capsys):
    assert main(["summary", "resnet18", "--input", "1x28x28", "--small-input"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "resnet18, input 1x28x28"
    assert sum(" Residual " in line for line in lines) == 8
    assert any("512x4x4" in line for line in lines)
    assert "total params: 11,172,810" in out  # 10 classes, one input channel


def test_cli_summary_bad_name_exits_2_with_one_line(capsys):
    assert main(["summary", "resnt18"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1
    assert "unknown model 'resnt18'" in err[0] and "resnet18" in err[0]
    assert captured.out == ""


def test_cli_summary_too_small_for_faithful_form(capsys):
    assert main(["summary", "alexnet", "--input", "1x28x28"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].endswith(
        "alexnet (faithful form) needs images of at least 63 px, these are 28x28; "
        "use --input 1x63x63 or --small-input"
    )


def test_registry_imports_no_model():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(registry))
    imported = [
        (node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert imported and not any("models" in m for m in imported)


# ------------------------------------------------------------ bounded before allocated


def test_width_whose_channels_overflow_is_one_model_error():
    with pytest.raises(ModelError, match="resnet18: cannot build it with these options") as err:
        get_model("resnet18", width=1e9)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="cannot build") as err:
        get_model("resnet18", num_classes=10**30)
    assert "\n" not in str(err.value)


def test_parameters_beyond_memory_are_refused_before_allocation(monkeypatch):
    monkeypatch.setattr(registry, "available_memory", lambda: 2**30)
    # resnet18 at width 10: about 1.1G parameters, 4.3 GiB of float32.
    with pytest.raises(ModelError) as err:
        get_model("resnet18", width=10)
    assert str(err.value).startswith("resnet18 with width=10, num_classes=1000, in_channels=3")
    assert "more than the 1.0 GiB of memory available; lower --width" in str(err.value)
    with pytest.raises(ModelError, match="memory available"):
        get_model("resnet18", in_channels=10**6)
    with pytest.raises(ModelError, match="memory available"):
        get_model("vgg11", num_classes=10**8)
    with torch.device("meta"):  # shapes only: nothing to refuse
        assert get_model("resnet18", width=10).layer4[0].conv1.out_channels == 5120
    # Within the memory, it builds.
    assert get_model("resnet18", width=0.125, num_classes=10).name == "resnet18"


@pytest.mark.parametrize(
    "options",
    [
        {"dropout": 5.0},
        {"layers": (1,)},
        {"block_config": (10**6,)},
        {"block_config": ("a",)},
        {"growth_rate": 10**30},
    ],
    ids=["dropout", "layers", "depth", "type", "growth"],
)
def test_absurd_family_options_are_one_model_error(options):
    name = {"dropout": "alexnet", "layers": "resnet18"}.get(next(iter(options)), "densenet121")
    with pytest.raises(ModelError) as err:
        with torch.device("meta"):
            get_model(name, **options)
    assert "\n" not in str(err.value)
