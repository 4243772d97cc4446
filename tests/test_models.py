"""The six families: exact sizes, faithful and small-input forwards, blocks, options."""

from __future__ import annotations

import pytest
import torch
from conftest import HEAVY_MODELS, by_weight
from torch import nn

from convzoo import get_model, list_models, summary
from convzoo.errors import ConfigError, ModelError
from convzoo.models import check_input_size
from convzoo.models.densenet import ConvBlock, DenseBlock, conv_block, transition_block
from convzoo.models.googlenet import AUX_LOSS_WEIGHT, Inception
from convzoo.models.layers import scale_width
from convzoo.models.nin import mlpconv
from convzoo.models.resnet import Bottleneck, Residual
from convzoo.models.vgg import vgg_block, vgg_stack

# One intra-op thread: these models are tiny, and the machine may be shared.
pytestmark = pytest.mark.usefixtures("one_thread")


ALL = list_models()

# Parameters at num_classes=1000, in_channels=3, faithful form.
PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg16_bn": 138_365_992,
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "alexnet": 62_378_344,
    "googlenet": 6_998_552,
}

# Models run at full width in the faithful 224 px forward; the others at width 0.25.
FULL_WIDTH_224 = {"alexnet", "nin", "googlenet", "resnet18", "resnet50", "densenet121"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, **options)


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    assert n_params(meta_model(name)) == PARAMS[name]


def test_googlenet_batch_norm_parameter_count():
    model = meta_model("googlenet", batch_norm=True)
    assert n_params(model) == 7_005_832
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 + 9 * 6
    assert all(c.bias is None for c in convs)
    # The paper's 5x5 convolutions on the third path, not torchvision's 3x3.
    for block in (m for m in model.modules() if isinstance(m, Inception)):
        convs = [c for c in block.p3 if isinstance(c, nn.Conv2d)]
        assert convs[1].kernel_size == (5, 5)


def test_googlenet_aux_parameter_count():
    # Each auxiliary head: 1x1 conv (128), dense 2048 -> 1024, dense 1024 -> 1000.
    aux1 = 512 * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
    aux2 = 528 * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
    assert n_params(meta_model("googlenet", aux_logits=True)) == PARAMS["googlenet"] + aux1 + aux2
    # The auxiliary heads sit on 4a (512 channels) and 4d (528).
    model = meta_model("googlenet", aux_logits=True)
    assert model.aux1.net[1].in_channels == 512 and model.aux2.net[1].in_channels == 528


def test_width_scales_channels_and_dense_layers():
    assert scale_width(64, 0.25) == 16
    assert scale_width(3, 0.1) == 1
    assert scale_width(96, 0.5) == 48
    last_linear = {
        "resnet18": 128,
        "resnet50": 512,
        "vgg16": 1024,
        "alexnet": 1024,
        "googlenet": 256,
        "densenet121": 256,
    }
    for name, features in last_linear.items():
        model = meta_model(name, width=0.25, in_channels=1, num_classes=10)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert convs[0].in_channels == 1
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert (linears[-1].in_features, linears[-1].out_features) == (features, 10), name
    # AlexNet and VGG: the hidden dense layers shrink too.
    vgg = meta_model("vgg16", width=0.25)
    assert [m.out_features for m in vgg.modules() if isinstance(m, nn.Linear)] == [1024, 1024, 1000]
    nin = meta_model("nin", width=0.25, num_classes=10)
    assert [m.out_channels for m in nin.modules() if isinstance(m, nn.Conv2d)][::3] == [
        24,
        64,
        96,
        10,
    ]
    assert n_params(meta_model("resnet18", width=0.25)) < PARAMS["resnet18"] / 10


# ---------------------------------------------------------------------------- forwards


@pytest.mark.parametrize("name", by_weight(ALL))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["1x28x28", "3x32x32"])
def test_small_input_forward_backward(name, shape):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10, in_channels=shape[0], small_input=True, width=0.25)
    assert model.small_input is True and model.name == name
    assert model.min_input_size <= 28
    model.train()
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", by_weight(ALL))
def test_faithful_forward_224(name):
    torch.manual_seed(0)
    width = 1.0 if name in FULL_WIDTH_224 else 0.25
    model = get_model(name, width=width).eval()
    assert model.small_input is False and model.name == name
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", by_weight(ALL))
def test_faithful_full_width_larger_inputs(name):
    # Full width on the meta device: shapes only, no arithmetic.
    model = meta_model(name).eval()
    # (224 px at full width is covered by the summaries in test_anatomy.py.)
    out = model(torch.empty(2, 3, 320, 288, device="meta"))
    assert out.shape == (2, 1000)


def _forms():
    heavy = pytest.mark.slow
    return [
        pytest.param(n, s, marks=heavy) if n in HEAVY_MODELS else (n, s)
        for n in ALL
        for s in (False, True)
    ]


@pytest.mark.parametrize(("name", "small"), _forms())
def test_min_input_size_is_exact(name, small):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10, small_input=small, width=0.125).eval()
    m = model.min_input_size
    with torch.inference_mode():
        assert model(torch.randn(1, 3, m, m)).shape == (1, 10)
        if m == 1:
            return
        with pytest.raises(ModelError, match=f"at least {m}x{m} px"):
            model(torch.randn(1, 3, m - 1, m - 1))
        # Without the check, the layers themselves fail one pixel below the minimum.
        model.min_input_size = 1
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, m - 1, m - 1))


def test_expected_minimum_sizes():
    expected = {"alexnet": 63, "vgg16": 32, "nin": 67, "googlenet": 31, "resnet18": 1}
    for name, m in expected.items():
        assert meta_model(name).min_input_size == m
    assert meta_model("densenet121", small_input=True).min_input_size == 8


def test_too_small_input_says_what_to_do():
    model = get_model("alexnet", num_classes=10, width=0.125)
    with pytest.raises(ModelError) as err:
        model(torch.randn(1, 3, 28, 28))
    assert str(err.value) == (
        "alexnet needs images of at least 63x63 px in its faithful form, got 28x28; "
        "use small_input=True (--small-input) for 28-32 px images"
    )
    small = get_model("densenet121", num_classes=10, small_input=True, width=0.125)
    with pytest.raises(ModelError, match="small-input form, got 4x4; resize"):
        small(torch.randn(1, 3, 4, 4))


def test_wrong_channels_and_rank_are_model_errors():
    model = get_model("resnet18", num_classes=10, small_input=True, width=0.125)
    with pytest.raises(ModelError, match="in_channels=1"):
        model(torch.randn(2, 1, 28, 28))
    with pytest.raises(ModelError, match="batch"):
        model(torch.randn(3, 28, 28))


def test_same_seed_same_weights():
    for name in ("resnet18", "googlenet", "densenet121", "vgg11_bn", "alexnet", "nin"):
        opts = dict(num_classes=10, in_channels=1, small_input=True, width=0.25)
        torch.manual_seed(123)
        a = get_model(name, **opts).state_dict()
        torch.manual_seed(123)
        b = get_model(name, **opts).state_dict()
        torch.manual_seed(124)
        c = get_model(name, **opts).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point()), name


def test_kaiming_init():
    torch.manual_seed(0)
    model = get_model("resnet50", width=0.5, num_classes=10)
    conv = model.layer3[0].conv2  # fan out = 128 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    fc = model.head[-1]
    assert torch.all(fc.bias == 0) and fc.weight.std().item() == pytest.approx(0.01, rel=0.1)


# ---------------------------------------------------------------------------- families


def test_alexnet_plan_and_lrn():
    model = meta_model("alexnet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert (convs[0].kernel_size, convs[0].stride, convs[0].padding) == ((11, 11), (4, 4), (2, 2))
    rows = summary(model).rows
    assert rows[0].output_shape == (96, 55, 55)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.5, 0.5]
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [
        4096,
        4096,
        1000,
    ]
    lrn = meta_model("alexnet", lrn=True)
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in lrn.modules()) == 2
    assert n_params(lrn) == PARAMS["alexnet"]
    torch.manual_seed(0)
    small = get_model("alexnet", lrn=True, small_input=True, num_classes=10, width=0.25)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "convs"), [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)]
)
def test_vgg_configurations(name, convs):
    model = meta_model(name)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    bn = meta_model(name + "_bn")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == convs
    assert all(c.kernel_size == (3, 3) for c in model.modules() if isinstance(c, nn.Conv2d))


def test_vgg_block_and_stack():
    block = vgg_block(2, 8, in_channels=3)
    out = block(torch.randn(1, 3, 10, 10))
    assert out.shape == (1, 8, 5, 5)
    assert sum(isinstance(m, nn.Conv2d) for m in block) == 2
    ceil = vgg_block(1, 4, in_channels=3, ceil_mode=True, batch_norm=True)
    assert ceil(torch.randn(2, 3, 7, 7)).shape == (2, 4, 4, 4)
    stack = vgg_stack(((1, 4), (2, 8)), in_channels=1)
    assert len(stack) == 2
    assert stack(torch.randn(1, 1, 16, 16)).shape == (1, 8, 4, 4)


def test_nin_plan_has_no_dense_layer():
    model = meta_model("nin", num_classes=10)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs[::3]] == [11, 5, 3, 3]
    assert convs[-1].out_channels == 10
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    block = mlpconv(16, 3, 1, in_channels=3)
    assert block(torch.randn(1, 3, 11, 11)).shape == (1, 16, 5, 5)
    assert mlpconv(16, 3, 1, max_pooling=False, in_channels=3)(torch.randn(1, 3, 9, 9)).shape == (
        1,
        16,
        9,
        9,
    )


def test_inception_block():
    block = Inception(8, 4, 3, 5, 2, 6, 7)
    assert block.out_channels == 4 + 5 + 6 + 7
    out = block(torch.randn(2, 8, 9, 9))
    assert out.shape == (2, 22, 9, 9)
    # The paths are concatenated in order: 1x1, 3x3, 5x5, pool.
    x = torch.randn(2, 8, 9, 9)
    out = block(x)
    assert torch.equal(out[:, :4], block.p1(x))
    assert torch.equal(out[:, 4:9], block.p2(x))
    assert torch.equal(out[:, 9:15], block.p3(x))
    assert torch.equal(out[:, 15:], block.p4(x))
    assert (out >= 0).all()  # every path ends in a ReLU


def test_googlenet_aux_outputs():
    torch.manual_seed(0)
    model = get_model(
        "googlenet", num_classes=10, in_channels=1, small_input=True, width=0.25, aux_logits=True
    )
    x = torch.randn(2, 1, 28, 28)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 3
    assert all(o.shape == (2, 10) and torch.isfinite(o).all() for o in out)
    logits, aux1, aux2 = out
    loss_fn = nn.CrossEntropyLoss()
    y = torch.tensor([1, 2])
    (loss_fn(logits, y) + AUX_LOSS_WEIGHT * (loss_fn(aux1, y) + loss_fn(aux2, y))).backward()
    assert model.aux1.net[-1].weight.grad is not None
    model.eval()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    assert AUX_LOSS_WEIGHT == 0.3
    # Without aux_logits, training mode gives a plain tensor too.
    plain = get_model("googlenet", num_classes=10, small_input=True, width=0.25).train()
    assert isinstance(plain(torch.randn(2, 3, 32, 32)), torch.Tensor)


def test_googlenet_faithful_aux_at_224():
    torch.manual_seed(0)
    model = get_model("googlenet", aux_logits=True, batch_norm=True, width=0.25).train()
    logits, aux1, aux2 = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == aux1.shape == aux2.shape == (2, 1000)


def test_residual_and_bottleneck():
    same = Residual(8, 8)
    assert isinstance(same.shortcut, nn.Identity)
    assert same(torch.randn(2, 8, 6, 6)).shape == (2, 8, 6, 6)
    down = Residual(8, 16, stride=2)
    assert isinstance(down.shortcut, nn.Sequential)
    assert down.shortcut[0].kernel_size == (1, 1) and down.shortcut[0].stride == (2, 2)
    assert down(torch.randn(2, 8, 7, 7)).shape == (2, 16, 4, 4)
    wide = Bottleneck(8, 4, stride=2)
    assert wide.out_channels == 16
    assert wide.conv1.stride == (1, 1) and wide.conv2.stride == (2, 2)  # stride on the 3x3
    assert wide(torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4)
    resnet34 = meta_model("resnet34")
    assert sum(isinstance(m, Residual) for m in resnet34.modules()) == 16
    resnet152 = meta_model("resnet152")
    assert sum(isinstance(m, Bottleneck) for m in resnet152.modules()) == 50


def test_residual_is_identity_with_zero_init():
    torch.manual_seed(0)
    model = get_model(
        "resnet18", num_classes=10, small_input=True, width=0.25, zero_init_residual=True
    ).eval()
    block = model.layer1[0]
    x = torch.rand(1, 16, 5, 5)
    assert torch.allclose(block(x), x)


def test_dense_block_with_and_without_bottleneck():
    x = torch.randn(2, 16, 6, 6)
    for bottleneck in (True, False):
        block = DenseBlock(3, 16, 8, bottleneck=bottleneck).eval()
        out = block(x)
        assert block.out_channels == 16 + 3 * 8
        assert out.shape == (2, 40, 6, 6)
        assert torch.equal(out[:, :16], x)  # dense connectivity: the input is kept
    plain = DenseBlock(2, 4, 3, bottleneck=False)
    assert all(isinstance(layer, ConvBlock) for layer in plain.net)
    assert conv_block(4, 6)[-1].kernel_size == (3, 3)
    assert transition_block(8, 4)(torch.randn(1, 8, 6, 6)).shape == (1, 4, 3, 3)


def test_densenet_seed_variant_and_options():
    bc = meta_model("densenet121")
    seed = meta_model("densenet121", bottleneck=False, compression=0.5)
    convs = [m for m in seed.blocks.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 6 + 12 + 24 + 16
    assert n_params(seed) != n_params(bc)
    # d2l's transitions halve the channels: 64 + 6 * 32 = 256 -> 128.
    assert seed.blocks[1][2].out_channels == 128
    plain = meta_model("densenet121", bottleneck=False, compression=1.0)
    assert plain.blocks[1][2].out_channels == 256
    torch.manual_seed(0)
    model = get_model(
        "densenet121", bottleneck=False, small_input=True, num_classes=10, width=0.25, in_channels=1
    )
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert meta_model("densenet161").blocks[0].out_channels == 96 + 6 * 48
    for bad in (0.0, 1.5):
        with pytest.raises(ModelError, match="compression"):
            get_model("densenet121", compression=bad)


def test_unknown_family_option_is_a_model_error():
    with pytest.raises(ModelError, match="resnet18"):
        get_model("resnet18", aux_logits=True)


def test_check_input_size_names_the_fix():
    alexnet = meta_model("alexnet")
    check_input_size(alexnet, (3, 63, 63))
    with pytest.raises(ConfigError) as err:
        check_input_size(alexnet, (1, 28, 28))
    assert str(err.value) == (
        "alexnet (faithful form) needs images of at least 63 px, these are 28x28; "
        "use --image-size 63 or --small-input"
    )
    with pytest.raises(ConfigError, match="use --input 1x63x63 or --small-input$"):
        check_input_size(alexnet, (1, 28, 40), flag="--input")
    small = meta_model("densenet121", small_input=True)
    with pytest.raises(ConfigError, match=r"\(small-input form\).* 4x4; use --image-size 8$"):
        check_input_size(small, (4, 4))


def test_min_input_size_is_derived_once_per_architecture():
    from convzoo.models import layers

    model = meta_model("vgg11", small_input=False)
    assert model.min_input_size == 32
    key = (type(model), repr(model))
    assert layers._SMALLEST[key] == 32
    model.min_input_size = 5  # settable, e.g. to switch the check off
    assert model.min_input_size == 5
    assert meta_model("vgg11").min_input_size == 32


def test_resnet_needs_four_stages():
    from convzoo.models.resnet import ResNet

    with pytest.raises(ModelError, match="four positive"):
        ResNet(Residual, (2, 2))


def test_plain_networks_use_kaiming_fan_in_and_small_output_layers():
    torch.manual_seed(0)
    vgg = get_model("vgg11", width=0.25, num_classes=10, small_input=True)
    hidden, out = vgg.classifier[1], vgg.classifier[-1]
    assert hidden.weight.std().item() == pytest.approx((2 / hidden.in_features) ** 0.5, rel=0.05)
    assert out.weight.std().item() == pytest.approx(0.01, rel=0.1)
    conv = vgg.features[2][0]  # 32 -> 64 channels, fan in 32 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (32 * 9)) ** 0.5, rel=0.1)
    nin = get_model("nin", width=0.25, num_classes=10)
    assert nin.net[-3][-2].weight.std().item() == pytest.approx(0.01, rel=0.3)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_stem_stride_two_halves_the_small_form(name):
    plain = get_model(name, num_classes=10, in_channels=1, small_input=True, width=0.25)
    fast = get_model(
        name, num_classes=10, in_channels=1, small_input=True, width=0.25, stem_stride=2
    )
    x = torch.randn(2, 1, 28, 28)
    assert fast(x).shape == (2, 10)
    assert summary(fast, (1, 28, 28)).total_macs < 0.4 * summary(plain, (1, 28, 28)).total_macs
    with pytest.raises(ModelError, match="stem_stride"):
        get_model(name, stem_stride=2)  # faithful form: the paper's stem only


# ---------------------------------------------------------------------------- ablations


def test_resnet_plain_baseline_has_no_shortcuts():
    plain = meta_model("resnet18", shortcut=False)
    blocks = [m for m in plain.modules() if isinstance(m, Residual)]
    assert len(blocks) == 8 and all(b.shortcut is None for b in blocks)
    # The three projections (1x1 conv and batch norm) are all that is gone.
    projections = sum(a * b + 2 * b for a, b in ((64, 128), (128, 256), (256, 512)))
    assert n_params(plain) == PARAMS["resnet18"] - projections
    assert n_params(meta_model("resnet50", shortcut=False)) < PARAMS["resnet50"]
    with pytest.raises(ModelError, match="zero_init_residual needs the shortcuts"):
        get_model("resnet18", shortcut=False, zero_init_residual=True)
    torch.manual_seed(0)
    small = get_model("resnet18", shortcut=False, small_input=True, num_classes=10, width=0.125)
    assert small(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    # With the last batch norm at zero, a block is the identity with its shortcut and
    # zero without it.
    x = torch.rand(1, 4, 5, 5)
    for shortcut, expected in ((True, x), (False, torch.zeros_like(x))):
        block = Residual(4, 4, shortcut=shortcut).eval()
        nn.init.zeros_(block.bn2.weight)
        assert torch.equal(block(x), expected)


def test_nin_ablations_without_1x1_and_with_a_dense_head():
    base = meta_model("nin", num_classes=10)
    plain = meta_model("nin", num_classes=10, mlpconv_1x1=False)
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [11, 5, 3, 3]
    one_by_one = sum(2 * (c * c + c) for c in (96, 256, 384, 10))
    assert n_params(plain) == n_params(base) - one_by_one
    dense = meta_model("nin", num_classes=10, head="dense")
    linear = [m for m in dense.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(384 * 5 * 5, 10)]
    assert summary(dense).rows[-1].output_shape == (10,)
    torch.manual_seed(0)
    for options in ({"head": "dense"}, {"mlpconv_1x1": False}):
        small = get_model("nin", small_input=True, num_classes=10, width=0.25, **options)
        assert small(torch.randn(2, 3, 28, 28)).shape == (2, 10)
        assert small.min_input_size == 1
    assert dense.min_input_size == base.min_input_size == 67
    with pytest.raises(ModelError, match="head"):
        get_model("nin", head="fc")


@pytest.mark.parametrize("drop", [1, 2, 3, 4])
def test_googlenet_without_one_inception_branch(drop):
    keep = tuple(p for p in (1, 2, 3, 4) if p != drop)
    model = meta_model("googlenet", branches=keep)
    block = model.inception3a
    assert getattr(block, f"p{drop}") is None
    # 3a's paths give 64, 128, 32 and 32 channels.
    assert block.out_channels == 256 - (64, 128, 32, 32)[drop - 1]
    assert n_params(model) < PARAMS["googlenet"]
    out = model(torch.empty(2, 3, 224, 224, device="meta"))
    assert out.shape == (2, 1000)
    with pytest.raises(ModelError, match="paths"):
        get_model("googlenet", branches=(5,))


@pytest.mark.slow
def test_densenet_chain_keeps_the_widths():
    dense = meta_model("densenet121")
    chain = meta_model("densenet121", connect="chain")
    assert [b.out_channels for b in chain.blocks if isinstance(b, DenseBlock)] == [
        b.out_channels for b in dense.blocks if isinstance(b, DenseBlock)
    ]
    assert summary(chain).rows[-1].output_shape == (1000,)
    block = DenseBlock(2, 4, 3, bottleneck=False, connect="chain").eval()
    assert [layer[-1].out_channels for layer in block.net] == [7, 10]
    x = torch.randn(1, 4, 6, 6)
    assert block(x).shape == (1, 10, 6, 6)
    assert torch.equal(block(x), block.net[1](block.net[0](x)))  # no concatenation
    torch.manual_seed(0)
    small = get_model("densenet121", connect="chain", small_input=True, num_classes=10, width=0.125)
    assert small(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(ModelError, match="connect"):
        get_model("densenet121", connect="sum")


def test_alexnet_without_dropout():
    model = meta_model("alexnet", dropout=False)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0, 0]
    assert n_params(model) == PARAMS["alexnet"]
