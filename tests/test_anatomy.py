"""convzoo.summary on the registered models: totals, one row per block, shapes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import by_weight
from torch import nn

from convzoo import get_model, list_models, summary
from convzoo.anatomy import (
    Row,
    Summary,
    check_memory,
    memory_estimate,
    memory_terms,
    receptive_fields,
)
from convzoo.errors import ConfigError
from convzoo.units import human

# One intra-op thread: these models are tiny, and the machine may be shared.
pytestmark = pytest.mark.usefixtures("one_thread")


# Multiply-adds at 3x224x224 (convolutions and dense layers, one image).
MACS = {
    "resnet18": 1.814e9,
    "resnet50": 4.089e9,
    "vgg16": 15.47e9,
    "densenet121": 2.834e9,
    "googlenet": 1.58e9,
    "alexnet": 1.135e9,
}


def meta_model(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, **options)


def kinds(s: Summary, kind: str) -> list[Row]:
    return [r for r in s.rows if r.kind == kind]


@pytest.mark.parametrize("name", by_weight(sorted(MACS)))
def test_total_macs_at_224(name):
    s = summary(meta_model(name), (3, 224, 224))
    assert s.total_macs == pytest.approx(MACS[name], rel=0.02)
    assert s.model == name


@pytest.mark.parametrize("name", by_weight(list_models()))
@pytest.mark.parametrize("small", [False, True], ids=["faithful", "small"])
def test_rows_sum_to_totals(name, small):
    size = (1, 28, 28) if small else (3, 224, 224)
    model = meta_model(name, small_input=small, in_channels=size[0], num_classes=10)
    s = summary(model, size)
    assert sum(r.params for r in s.rows) == s.total_params == s.trainable_params
    assert sum(r.macs for r in s.rows) == s.total_macs > 0
    assert s.rows[-1].output_shape == (10,)
    assert s.input_size == size


def test_resnet18_one_row_per_residual():
    s = summary(meta_model("resnet18"))
    rows = kinds(s, "Residual")
    assert [r.name for r in rows] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    shapes = [(64, 56, 56)] * 2 + [(128, 28, 28)] * 2 + [(256, 14, 14)] * 2 + [(512, 7, 7)] * 2
    assert [r.output_shape for r in rows] == shapes
    # The first block of stage 2 has the projection shortcut: 2 3x3 convs + 1x1 + BNs.
    assert rows[2].params == 64 * 128 * 9 + 128 * 128 * 9 + 64 * 128 + 3 * 2 * 128


def test_resnet18_small_input_rows():
    s = summary(
        meta_model("resnet18", small_input=True, in_channels=1, num_classes=10), (1, 28, 28)
    )
    assert s.rows[0].output_shape == (64, 28, 28)  # 3x3 stride-1 stem
    assert not kinds(s, "MaxPool2d")  # no stem max pool
    shapes = [r.output_shape for r in kinds(s, "Residual")]
    assert shapes[::2] == [(64, 28, 28), (128, 14, 14), (256, 7, 7), (512, 4, 4)]


def test_densenet121_rows_per_dense_and_transition_block():
    s = summary(meta_model("densenet121"))
    dense, trans = kinds(s, "DenseBlock"), kinds(s, "Transition")
    assert [r.output_shape for r in dense] == [
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (1024, 7, 7),
    ]
    assert [r.output_shape for r in trans] == [(128, 28, 28), (256, 14, 14), (512, 7, 7)]
    # A transition: BN (2 * C) and a bias-free 1x1 conv, at the pooled size.
    assert trans[0].params == 2 * 256 + 256 * 128
    assert trans[0].macs == 56 * 56 * 256 * 128


def test_googlenet_one_row_per_inception():
    s = summary(meta_model("googlenet"))
    rows = kinds(s, "Inception")
    assert [r.name.rsplit("inception", 1)[1] for r in rows] == [
        "3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b",
    ]  # fmt: skip
    assert [r.output_shape for r in rows] == [
        (256, 28, 28),
        (480, 28, 28),
        (512, 14, 14),
        (512, 14, 14),
        (512, 14, 14),
        (528, 14, 14),
        (832, 14, 14),
        (832, 7, 7),
        (1024, 7, 7),
    ]
    assert [r.output_shape for r in kinds(s, "BasicConv")] == [
        (64, 112, 112),
        (64, 56, 56),
        (192, 56, 56),
    ]


def test_googlenet_aux_heads_have_no_rows_but_count_in_totals():
    s = summary(meta_model("googlenet", aux_logits=True))
    plain = summary(meta_model("googlenet"))
    assert s.total_macs == plain.total_macs  # the heads do not run in evaluation mode
    aux = 512 * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
    aux += 528 * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
    assert s.total_params == sum(r.params for r in s.rows) + aux


def test_vgg16_one_row_per_vgg_block():
    s = summary(meta_model("vgg16"))
    rows = kinds(s, "VGGBlock")
    assert [r.output_shape for r in rows] == [
        (64, 112, 112),
        (128, 56, 56),
        (256, 28, 28),
        (512, 14, 14),
        (512, 7, 7),
    ]
    small = summary(meta_model("vgg16", small_input=True, in_channels=1), (1, 28, 28))
    assert [r.output_shape[1] for r in kinds(small, "VGGBlock")] == [14, 7, 4, 2, 1]


def test_nin_one_row_per_mlpconv():
    s = summary(meta_model("nin", num_classes=10))
    rows = kinds(s, "MLPConv")
    assert [r.output_shape for r in rows] == [
        (96, 26, 26),
        (256, 12, 12),
        (384, 5, 5),
        (10, 5, 5),
    ]


def test_alexnet_rows_and_macs_by_layer():
    s = summary(meta_model("alexnet"))
    convs = kinds(s, "Conv2d")
    assert [r.output_shape for r in convs] == [
        (96, 55, 55),
        (256, 27, 27),
        (384, 13, 13),
        (384, 13, 13),
        (256, 13, 13),
    ]
    assert convs[0].macs == 55 * 55 * 96 * 3 * 11 * 11
    assert [r.macs for r in kinds(s, "Linear")] == [9216 * 4096, 4096 * 4096, 4096 * 1000]


def test_summary_restores_mode_and_prints_a_table():
    model = get_model("resnet18", small_input=True, num_classes=10, in_channels=1, width=0.25)
    model.train()
    s = summary(model, (1, 28, 28))
    assert model.training
    text = str(s)
    assert text.splitlines()[0] == "resnet18, input 1x28x28"
    assert "Residual" in text and f"total params: {s.total_params:,}" in text
    assert human(1_814_000_000) == "1.81G"


def test_summary_of_a_model_without_rows():
    s = summary(nn.Identity(), (1, 4, 4))
    assert s.rows == [] and s.total_params == 0
    assert "total params: 0" in str(s)


# ---------------------------------------------------------------------------- memory

SMALL = dict(small_input=True, in_channels=1, num_classes=10)


def test_memory_is_parameters_plus_images():
    fixed, per_image = memory_terms("resnet18", SMALL, (1, 28, 28), training=False)
    params = sum(p.numel() for p in meta_model("resnet18", **SMALL).parameters())
    assert fixed == 4 * params  # float32
    # At least the largest activation (64x28x28 after the stem), at most all of them.
    assert 64 * 28 * 28 * 4 <= per_image < 20 * 64 * 28 * 28 * 4
    for batch in (1, 7, 200_000):
        est = memory_estimate("resnet18", SMALL, (1, 28, 28), batch, training=False)
        assert est == fixed + batch * per_image


def test_training_needs_more_than_inference():
    infer = memory_terms("resnet18", SMALL, (1, 28, 28), training=False)
    train = memory_terms("resnet18", SMALL, (1, 28, 28), training=True)
    assert train[0] == 4 * infer[0]  # weights, gradients, two optimizer moments
    # Every block's output is kept for the backward: the eight Residual outputs alone.
    s = summary(meta_model("resnet18", **SMALL), (1, 28, 28))
    kept = sum(4 * math.prod(r.output_shape) for r in kinds(s, "Residual"))
    assert train[1] > kept and train[1] > infer[1]


def test_check_memory_names_the_numbers_and_the_fix():
    fixed, per_image = memory_terms("resnet18", SMALL, (1, 28, 28), training=False)
    limit = fixed + 1000 * per_image + 1
    assert check_memory("resnet18", SMALL, (1, 28, 28), 1000, training=False, limit=limit) == (
        limit - 1
    )
    with pytest.raises(ConfigError) as err:
        check_memory(
            "resnet18",
            SMALL,
            (1, 28, 28),
            200_000,
            training=False,
            limit=limit,
            what="bench throughput",
        )
    msg = str(err.value)
    assert msg.startswith("bench throughput: resnet18 (inference) at batch 200,000 of 1x28x28")
    assert "(at most 1,000 images per batch fit); lower --batch, --width or --input" in msg
    with pytest.raises(ConfigError, match="not even one image fits"):
        check_memory("resnet18", SMALL, (1, 28, 28), 1, training=True, limit=fixed)


def test_memory_of_sizes_beyond_a_tensor_is_refused_not_overflowed():
    huge = (1, 10**9, 10**9)
    est = memory_estimate("resnet18", SMALL, huge, 1, training=False)
    assert est > 2**62
    with pytest.raises(ConfigError, match="1x1000000000x1000000000"):
        check_memory("resnet18", SMALL, huge, 1, training=True)
    with pytest.raises(ConfigError, match="batch size"):
        memory_estimate("resnet18", SMALL, (1, 28, 28), 0, training=False)
    with pytest.raises(ConfigError, match="input size"):
        memory_estimate("resnet18", SMALL, (1, 28), 1, training=False)


# ---------------------------------------------------------------------------- receptive fields


def test_receptive_fields_of_chains_match_the_published_figures():
    vgg = receptive_fields(meta_model("vgg16"))
    assert vgg["features.4.4"] == (196, 16)  # conv5_3
    assert vgg["features.4"] == (212, 32)  # after pool5
    alexnet = receptive_fields(meta_model("alexnet"))
    assert alexnet["features.10"] == (163, 16)  # conv5
    assert alexnet["features.12"] == (195, 32)  # pool5
    assert receptive_fields(meta_model("resnet18"))["layer4"] == (435, 32)


def test_receptive_fields_take_the_widest_branch():
    g = receptive_fields(meta_model("googlenet"))
    # 7x7/2 conv, 3x3/2 pool, 1x1, 3x3, 3x3/2 pool: 7, 11, 11, 19, 27 (jump 8).
    assert g["stem"] == (27, 8)
    assert g["inception3a"] == (27 + 4 * 8, 8)  # the 5x5 path
    d = receptive_fields(meta_model("densenet121"))
    assert d["stem"] == (11, 4)
    # Six layers, each with one 3x3 conv at jump 4; the concatenation keeps the widest.
    assert d["blocks.0"] == (11 + 6 * 2 * 4, 4)
    assert d["blocks.1"] == (59 + 4, 8)  # the transition's 2x2/2 average pool
    r = receptive_fields(meta_model("resnet18"))
    # The first block of stage 2: two 3x3 convs (the first with stride 2, at jump 4,
    # then at jump 8) beat the 1x1 projection shortcut.
    assert r["layer1"] == (43, 4)
    assert r["layer2.0.shortcut"] == (43, 8)
    assert r["layer2.0"] == (43 + 2 * 4 + 2 * 8, 8)


def test_summary_rows_carry_receptive_field_and_jump():
    s = summary(meta_model("vgg16"))
    blocks = kinds(s, "VGGBlock")
    assert [(r.receptive_field, r.jump) for r in blocks] == [
        (6, 2),
        (16, 4),
        (44, 8),
        (100, 16),
        (212, 32),
    ]
    table = str(s).splitlines()
    assert table[1].split() == [
        "block",
        "type",
        "output",
        "shape",
        "RF",
        "jump",
        "params",
        "mult-adds",
    ]
    assert any(
        line.split()[:5] == ["features.4", "VGGBlock", "512x7x7", "212", "32"] for line in table
    )
