"""Batch norm folding and fused convolutions: the rewrite behind the "fast" and "bf16"
inference backends of :mod:`convzoo.infer`.

:func:`fold_model` returns a rewritten, channels-last, eval-mode deep copy of a model.
Every convolution that is directly followed by a batch norm absorbs it (Ioffe and
Szegedy 2015: in eval mode batch norm is a fixed per-channel affine map, ``w' = w * g /
sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``, computed in float64); a
ReLU after it, and in ResNet blocks the shortcut addition and the ReLU after it, run
inside the convolution kernel as oneDNN post-ops, with the weights reordered once into
oneDNN's blocked layout for the example's shape. Dropout is dropped. DenseNet dense
blocks write each layer's features into one preallocated tensor instead of
concatenating, and a transition's 1x1 convolution runs after its 2x2 average pool (both
are linear and the convolution is pointwise, so the order does not change the result).
Batch norm that *precedes* a convolution with a ReLU in between (DenseNet's
pre-activation ``conv_block``) cannot be folded and is kept as :class:`ScaleShift`.

With ``dtype=torch.bfloat16`` the folded weights (computed in float64 as above) are
rounded once to bfloat16 and the oneDNN kernels run in bfloat16: the "bf16" backend.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FusedConv2d",
    "ScaleShift",
    "fold_batch_norm",
    "fold_model",
    "fold_report",
]


def _foldable(bn: nn.Module, channels: int) -> bool:
    return (
        type(bn) is nn.BatchNorm2d
        and bn.num_features == channels
        and bn.running_mean is not None
        and bn.running_var is not None
    )


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor | None]:
    """Weight and bias of ``conv`` followed by ``bn`` (eval mode) as one convolution.

    Computed in float64 and returned in the convolution's dtype, detached.
    """
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if bn is None:
        return w.clone(), None if b is None else b.clone()
    w64 = w.double()
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    shape = (-1,) + (1,) * (w.dim() - 1)
    base = b.double() if b is not None else torch.zeros_like(mean)
    return (w64 * scale.reshape(shape)).to(w.dtype), ((base - mean) * scale + beta).to(w.dtype)


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


def _mkldnn_ops_available() -> bool:
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
    )


class FusedConv2d(nn.Module):
    """A convolution with its batch norm folded in, an optional ReLU, and an optional
    residual added before the ReLU: ``relu(conv(x) + residual)``.

    After :meth:`prepack` (CPU, float32 or bfloat16, oneDNN available) the forward is a single
    oneDNN convolution with the addition and ReLU as post-ops and the weight already in
    oneDNN's blocked layout; otherwise it is ``F.conv2d`` followed by in-place ops.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, relu: bool = False):
        super().__init__()
        weight, bias = fold_batch_norm(conv, bn)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        self.groups = conv.groups
        self.relu = relu
        self.folded_bn = bn is not None
        self.packed: Tensor | None = None

    def extra_repr(self) -> str:
        parts = [
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}",
            f"stride={self.stride}",
            f"padding={self.padding}",
        ]
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        parts.append(f"batch_norm_folded={self.folded_bn}, relu={self.relu}")
        parts.append(f"prepacked={self.packed is not None}")
        return ", ".join(parts)

    @property
    def is_pointwise(self) -> bool:
        """A 1x1 convolution with stride 1 and no padding (commutes with average pooling)."""
        return (
            self.kernel_size == (1, 1)
            and self.stride == (1, 1)
            and self.padding in ((0, 0), "valid")
            and not self.relu
        )

    def _args(self) -> tuple[list[int], list[int], list[int], int]:
        return _pair(self.padding), _pair(self.stride), _pair(self.dilation), self.groups

    def prepack(self, input_shape: torch.Size | tuple[int, ...]) -> bool:
        """Reorder the weight for oneDNN, tuned for inputs of ``input_shape``.

        Other shapes still work (oneDNN adapts), only less quickly. Returns whether the
        fused oneDNN path is now in use (False: not applicable here).
        """
        w = self.weight
        if (
            not _mkldnn_ops_available()
            or w.device.type != "cpu"
            or w.dtype not in (torch.float32, torch.bfloat16)
            or isinstance(self.padding, str)
        ):
            return False
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            w.contiguous(), *self._args(), [int(s) for s in input_shape]
        )
        # The prepacked weight is an opaque oneDNN tensor, tied to this process and
        # device: it is kept out of the state dict (the weight buffer stays there).
        self.packed = packed
        return True

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        packed = self.packed
        if packed is not None and x.device.type == "cpu" and x.dtype == packed.dtype:
            post = "relu" if self.relu else "none"
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, packed, self.bias, *self._args(), post, [], ""
                )
            # (N, C_out, H', W'): conv + bias + residual, then the unary post-op.
            other = residual.contiguous(memory_format=torch.channels_last)
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, packed, self.bias, *self._args(), "add", 1.0, post, [], ""
            )
        y = F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
        if residual is not None:
            y = y.add_(residual)
        return y.relu_() if self.relu else y


class ScaleShift(nn.Module):
    """A batch norm in eval mode that no convolution before it can absorb, as the
    per-channel affine map it is (``x * scale + shift``), optionally with the ReLU
    after it: DenseNet's pre-activation (BN before the convolution, Huang et al. 2017).
    One pass over a strided view, where batch norm takes a slower path."""

    def __init__(self, bn: nn.BatchNorm2d, relu: bool = False):
        super().__init__()
        mean = bn.running_mean.detach().double()
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        dtype = bn.running_mean.dtype
        self.register_buffer("scale", scale.to(dtype).reshape(1, -1, 1, 1))
        self.register_buffer("shift", (beta - mean * scale).to(dtype).reshape(1, -1, 1, 1))
        self.relu = relu

    def extra_repr(self) -> str:
        return f"{self.scale.shape[1]}, relu={self.relu}"

    def forward(self, x: Tensor) -> Tensor:
        y = torch.addcmul(self.shift, x, self.scale)  # (N, C, H, W), x's memory format
        return y.relu_() if self.relu else y


class _FastResidual(nn.Module):
    """ResNet's ``Residual`` or ``Bottleneck`` with every conv-BN pair folded and the
    shortcut addition and final ReLU fused into the last convolution."""

    def __init__(self, block: nn.Module):
        super().__init__()
        convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
        bns = [block.bn1, block.bn2] + ([block.bn3] if hasattr(block, "bn3") else [])
        self.convs = nn.ModuleList(
            FusedConv2d(c, b, relu=True) for c, b in zip(convs, bns, strict=True)
        )
        shortcut = block.shortcut
        if isinstance(shortcut, nn.Identity):
            self.shortcut: nn.Module | None = None
        else:
            conv, bn = shortcut[0], shortcut[1] if len(shortcut) > 1 else None
            self.shortcut = FusedConv2d(
                conv, bn if bn is not None and _foldable(bn, conv.out_channels) else None
            )

    def forward(self, x: Tensor) -> Tensor:
        # (N, C_in, H, W) -> (N, C_out, H / stride, W / stride)
        out = x
        for conv in self.convs[:-1]:
            out = conv(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.convs[-1](out, residual=shortcut)


class _FastDenseBlock(nn.Module):
    """DenseNet's ``DenseBlock`` writing each layer's features into one preallocated
    tensor: layer ``i`` reads the first ``c_i`` channels (a view, no copy) and its
    ``growth_rate`` new channels are copied in after them. The result equals the
    repeated concatenation, without copying the growing tensor at every layer."""

    def __init__(self, block: nn.Module, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.out_channels = block.out_channels

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        fmt = (
            torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format
        )
        out = torch.empty(
            (n, self.out_channels, h, w), dtype=x.dtype, device=x.device, memory_format=fmt
        )
        out[:, :c].copy_(x)
        for layer in self.layers:
            y = layer(out[:, :c])  # (N, growth_rate, H, W)
            g = y.shape[1]
            out[:, c : c + g].copy_(y)
            c += g
        return out  # (N, out_channels, H, W)


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _commutes_with_conv(pool: nn.Module) -> bool:
    # A k x k average pool with stride k and no padding: pointwise 1x1 convolutions
    # commute with it exactly (both are linear; the pool averages whole pixels).
    if type(pool) is not nn.AvgPool2d or pool.ceil_mode or pool.divisor_override is not None:
        return False
    k, s, p = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
    return k == s and p == [0, 0]


def _fuse_layers(layers: list[nn.Module]) -> list[nn.Module]:
    """Peephole rewrite of a flat list of layers: Conv [BN] [ReLU] -> FusedConv2d,
    BN [ReLU] (no conv before it) -> ScaleShift, pointwise conv then average pool ->
    pool then conv, dropout removed."""
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        m = layers[i]
        if type(m) is nn.Conv2d and m.padding_mode == "zeros":
            j = i + 1
            bn = None
            if j < len(layers) and _foldable(layers[j], m.out_channels):
                bn = layers[j]
                j += 1
            relu = j < len(layers) and type(layers[j]) is nn.ReLU
            out.append(FusedConv2d(m, bn, relu=relu))
            i = j + int(relu)
            continue
        if isinstance(m, nn.Dropout | nn.Dropout2d):
            i += 1
            continue
        if _foldable(m, getattr(m, "num_features", -1)):
            relu = i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU
            out.append(ScaleShift(m, relu=relu))
            i += 1 + int(relu)
            continue
        if (
            _commutes_with_conv(m)
            and out
            and isinstance(out[-1], FusedConv2d)
            and out[-1].is_pointwise
        ):
            out.insert(len(out) - 1, m)
            i += 1
            continue
        out.append(m)
        i += 1
    return out


def _flatten(seq: nn.Sequential) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for child in seq.children():
        if _is_plain_sequential(child):
            layers.extend(_flatten(child))
        elif type(child) is nn.Conv2d or isinstance(child, nn.Dropout | nn.Dropout2d):
            layers.append(child)  # paired with its neighbours by _fuse_layers
        else:
            layers.append(_rewrite(child))
    return layers


def _rewrite(m: nn.Module) -> nn.Module:
    """The inference form of ``m`` (which belongs to a private copy and may be reused)."""
    from .models.densenet import DenseBlock
    from .models.resnet import Bottleneck, Residual

    if isinstance(m, Residual | Bottleneck):
        return _FastResidual(m)
    if isinstance(m, DenseBlock):
        return _FastDenseBlock(m, [_rewrite(layer) for layer in m.net])
    if _is_plain_sequential(m):
        return nn.Sequential(*_fuse_layers(_flatten(m)))
    if type(m) is nn.Conv2d and m.padding_mode == "zeros":
        return FusedConv2d(m)
    if isinstance(m, nn.Dropout | nn.Dropout2d):
        return nn.Identity()
    for name, child in list(m.named_children()):
        setattr(m, name, _rewrite(child))
    return m


def fold_report(model: nn.Module) -> dict[str, int]:
    """Counts in an optimized model: fused convolutions, batch norms folded into them,
    batch norms left (those that precede their convolution), prepacked convolutions."""
    fused = [m for m in model.modules() if isinstance(m, FusedConv2d)]
    return {
        "convolutions": len(fused),
        "batch_norms_folded": sum(m.folded_bn for m in fused),
        "batch_norms_left": sum(
            isinstance(m, nn.modules.batchnorm._BatchNorm | ScaleShift) for m in model.modules()
        ),
        "prepacked": sum(m.packed is not None for m in fused),
    }


def fold_model(model: nn.Module, example: Tensor, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A folded, fused, channels-last deep copy of ``model`` (eval mode, no gradients) in
    ``dtype`` (float32 or bfloat16), its convolutions prepacked for batches shaped like
    ``example`` (N, C, H, W) where oneDNN is available. ``model`` is not modified."""
    inference = _rewrite(copy.deepcopy(model)).eval()
    for p in inference.parameters():
        p.requires_grad_(False)
    inference.to(dtype=dtype, memory_format=torch.channels_last)
    x = example.to(dtype).contiguous(memory_format=torch.channels_last)
    shapes: dict[FusedConv2d, torch.Size] = {}

    def record(mod: nn.Module, args: tuple) -> None:
        shapes.setdefault(mod, args[0].shape)

    hooks = [
        m.register_forward_pre_hook(record)
        for m in inference.modules()
        if isinstance(m, FusedConv2d)
    ]
    try:
        with torch.inference_mode():
            inference(x[:1])  # one image finds every convolution's input shape
    finally:
        for h in hooks:
            h.remove()
    for m, shape in shapes.items():
        m.prepack((x.shape[0], *shape[1:]))
    return inference
