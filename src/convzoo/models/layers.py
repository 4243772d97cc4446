"""Bits shared by every family: width scaling, input checks, initialisation.

Each family's own blocks live in its own module; only what several families use is
here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ConfigError, ModelError


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded half up to an integer, at least 1.

    ``width=0.25`` gives the quarter-width networks the d2l book trained on a CPU.
    """
    return max(1, int(math.floor(channels * width + 0.5)))


def conv_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    batch_norm: bool = False,
    bias: bool = True,
    bn_eps: float = 1e-5,
) -> list[nn.Module]:
    """Conv, optional batch norm, ReLU: the layers, to be placed in a Sequential."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels, eps=bn_eps))
    layers.append(nn.ReLU(inplace=True))
    return layers


def init_weights(
    model: nn.Module, *, conv_mode: str = "fan_in", outputs: Iterable[nn.Module] = ()
) -> None:
    """He et al. (2015) initialisation, the default of every family here.

    Convolutions and hidden dense layers: Kaiming normal for ReLU (``conv_mode``
    "fan_in" keeps the forward signal's scale, which matters in the networks without
    batch norm; "fan_out" the backward one), zero bias. Batch norm: weight 1, bias 0.
    The output layers (``outputs``: the classifiers, dense or 1x1 conv) get
    N(0, 0.01) as in the AlexNet and VGG papers, so the first predictions are close
    to uniform. Deterministic given the torch seed. Nothing to do for a model built
    on the meta device (shapes only), which is then also quicker to build.
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm)):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in outputs:
        nn.init.normal_(m.weight, 0.0, 0.01)


# The largest side searched for a model's smallest input; no network here needs more.
_MAX_PROBE = 1 << 14
# Smallest inputs found so far, by (class, repr): the repr lists every layer with its
# kernel, stride and padding, so two models with the same one share the answer.
_SMALLEST: dict[tuple[type, str], int] = {}


def smallest_input(model: ConvNet) -> int:
    """Smallest H=W for which ``model``'s forward runs, found by running the forward on
    one blank image, so that the layers themselves are the one description of the
    network.

    A model built on the meta device is probed there (shapes only); any other is probed
    where its weights are, under ``no_grad``: the probed sizes stay below twice the
    answer (a few hundred pixels at most), where a real forward is cheaper than a meta
    one (PyTorch's meta kernels cost about a millisecond an operation: seconds for a
    DenseNet). Exponential then binary search, which assumes that a size that works
    stays working for every larger one (true of convolutions and pooling: output sizes
    never shrink as the input grows). The forward runs in evaluation mode, which draws
    no random numbers; the model's own size check and any forward hooks on its modules
    (a summary's, say) are switched off meanwhile.
    """
    key = (type(model), repr(model))
    if key in _SMALLEST:
        return _SMALLEST[key]
    first = next(iter(model.parameters()), None)
    where = {"device": first.device, "dtype": first.dtype} if first is not None else {}

    def runs(size: int) -> bool:
        x = torch.zeros(1, model.in_channels, size, size, **where)
        try:
            with torch.no_grad():
                model(x)
        except RuntimeError:  # the layers refuse an input that leaves no pixel
            return False
        return True

    was_training, saved = model.training, model.__dict__.get("_min_input_size")
    hooks = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    for m, _, _ in hooks:
        m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
    model.eval()
    model._min_input_size = 1
    try:
        ok = 1
        while not runs(ok):
            ok *= 2
            if ok > _MAX_PROBE:
                raise ModelError(f"{model.name} runs on no input up to {_MAX_PROBE} px")
        bad = ok // 2  # fails (or 0)
        while ok - bad > 1:
            mid = (ok + bad) // 2
            if runs(mid):
                ok = mid
            else:
                bad = mid
    finally:
        for m, post, pre in hooks:
            m._forward_hooks, m._forward_pre_hooks = post, pre
        model.train(was_training)
        model._min_input_size = saved
    if len(_SMALLEST) > 256:
        _SMALLEST.clear()
    _SMALLEST[key] = ok
    return ok


class ConvNet(nn.Module):
    """Base of every convzoo model: its registered name and the input checks.

    Attributes:
        name: the registered name, e.g. ``"resnet18"``.
        small_input: True for the 28-32 px form.
        in_channels: channels the model was built for.
        min_input_size: smallest H=W the forward accepts, derived from the layers
            (:func:`smallest_input`) the first time it is asked for.
    """

    name: str = "model"
    small_input: bool = False
    in_channels: int = 3
    _min_input_size: int | None = None

    @property
    def min_input_size(self) -> int:
        if self._min_input_size is None:
            self._min_input_size = smallest_input(self)
        return self._min_input_size

    @min_input_size.setter
    def min_input_size(self, value: int) -> None:
        self._min_input_size = value

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ModelError` for a batch this model cannot take, saying what to do."""
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return
        if x.dim() != 4:
            raise ModelError(
                f"{self.name} expects a batch of images (N, C, H, W), got a tensor of "
                f"shape {tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)"
            )
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        if c != self.in_channels:
            raise ModelError(
                f"{self.name} was built for {self.in_channels}-channel images, got {c} "
                f"channels; build it with in_channels={c}"
            )
        m = self.min_input_size
        if h < m or w < m:
            if self.small_input:
                form, hint = "small-input", "resize the images to at least that size"
            else:
                form = "faithful"
                hint = "use small_input=True (--small-input) for 28-32 px images"
            raise ModelError(
                f"{self.name} needs images of at least {m}x{m} px in its {form} form, "
                f"got {h}x{w}; {hint}"
            )


def check_input_size(
    model: ConvNet, input_size: tuple[int, ...], *, flag: str = "--image-size"
) -> None:
    """:class:`ConfigError` when images of ``input_size`` ((C, H, W) or (H, W)) are too
    small for ``model``; the message names the option that fixes it (``flag``:
    ``--image-size`` for training, ``--input`` for the commands that take CxHxW)."""
    h, w = int(input_size[-2]), int(input_size[-1])
    n = model.min_input_size
    if min(h, w) >= n:
        return
    small = bool(getattr(model, "small_input", False))
    form = "small-input" if small else "faithful"
    if flag == "--input":
        c = int(input_size[0]) if len(input_size) == 3 else model.in_channels
        fix = f"--input {c}x{n}x{n}"
    else:
        fix = f"{flag} {n}"
    if not small:
        fix += " or --small-input"
    raise ConfigError(
        f"{getattr(model, 'name', type(model).__name__)} ({form} form) needs images of at "
        f"least {n} px, these are {h}x{w}; use {fix}"
    )
