"""Fast inference: batch norm folded into the convolutions, fused oneDNN kernels,
channels-last memory, and an onnxruntime backend.

:func:`optimize` turns a trained model (in eval mode) into an inference-only copy:

* ``"eager"``: the model itself, unchanged (the reference).
* ``"fast"``: a rewritten deep copy. Every convolution that is directly followed by a
  batch norm absorbs it (Ioffe and Szegedy 2015: in eval mode batch norm is a fixed
  per-channel affine map, ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g /
  sqrt(v + eps) + beta``, computed in float64); a ReLU after it, and in ResNet blocks
  the shortcut addition and the ReLU after it, run inside the convolution kernel as
  oneDNN post-ops, with the weights reordered once into oneDNN's blocked layout for
  the example's shape; activations are kept channels-last (NHWC). Dropout is dropped.
  DenseNet dense blocks write each layer's features into one preallocated tensor
  instead of concatenating, and a transition's 1x1 convolution runs after its 2x2
  average pool (both are linear and the convolution is pointwise, so the order does not
  change the result, and the convolution sees a quarter of the pixels). Batch norm
  that *precedes* a convolution with a ReLU in between (DenseNet's pre-activation
  ``conv_block``) cannot be folded and is kept. ``compile=True`` adds ``torch.compile``
  (inductor, with weight freezing) on top; it is off by default because compiling
  takes tens of seconds on a small CPU and recompiles for every new batch size.
* ``"onnxruntime"``: the model exported with :mod:`convzoo.onnx_io` (the exporter
  ``convzoo export`` uses) and run by an onnxruntime CPU session with ``threads`` intra-op threads; called
  with a torch tensor, it returns a torch tensor.

All three compute the same function: outputs agree with the eager model to 1e-4
(relative, with an absolute floor of 1e-5 of the largest output). A model in training
mode is refused (:class:`~convzoo.errors.ModelError`): folding uses the running
statistics, which a model in training mode does not use, so the result would not be
the model the caller has. The caller's model is never modified.

:func:`measure_throughput` times repeated calls after a warm-up (median latency per
batch, images per second).
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device import synchronize
from .errors import ConfigError, ConvzooError, ModelError

__all__ = [
    "BACKENDS",
    "FastModel",
    "FusedConv2d",
    "OnnxRuntimeModel",
    "ScaleShift",
    "classify_images",
    "evaluate_test_set",
    "fold_report",
    "load_images",
    "load_trained",
    "max_relative_error",
    "measure_throughput",
    "optimize",
    "outputs_match",
]

BACKENDS = ("eager", "fast", "onnxruntime")
# |got - ref| <= RTOL * |ref| + ATOL_SCALE * max|ref|: the agreement every backend keeps.
RTOL = 1e-4
ATOL_SCALE = 1e-5


# -- batch norm folding and fused convolutions ------------------------------------------


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

    After :meth:`prepack` (CPU, float32, oneDNN available) the forward is a single
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
            or w.dtype != torch.float32
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
        if packed is not None and x.device.type == "cpu" and x.dtype == torch.float32:
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


class FastModel(nn.Module):
    """The ``"fast"`` backend: a rewritten eval-mode copy run channels-last in inference
    mode. Call it like the model; the output is an ordinary (N, num_classes) tensor."""

    def __init__(self, model: nn.Module, *, compiled: Callable | None = None):
        super().__init__()
        self.model = model
        self.memory_format = torch.channels_last
        self._compiled = compiled
        self.backend = "fast"
        self.compiled = compiled is not None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        with torch.inference_mode():
            fn = self._compiled if self._compiled is not None else self.model
            out = fn(x)
            return out[0] if isinstance(out, tuple | list) else out

    def train(self, mode: bool = True) -> FastModel:
        # An inference copy has no training mode: BN is folded away.
        if mode:
            raise ModelError("an optimized model is for inference only; train the original model")
        return super().train(False)


def _build_fast(model: nn.Module, example: Tensor, *, compile: bool | str) -> FastModel:
    inference = _rewrite(copy.deepcopy(model)).eval()
    for p in inference.parameters():
        p.requires_grad_(False)
    inference.to(memory_format=torch.channels_last)
    x = example.contiguous(memory_format=torch.channels_last)
    if compile:
        return _compiled_fast(inference, x, mode=compile)
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
    return FastModel(inference)


def _compiled_fast(inference: nn.Module, x: Tensor, *, mode: bool | str) -> FastModel:
    """torch.compile (inductor, frozen weights) over the folded copy. With ``mode ==
    "auto"`` the compiled form is kept only if it is measurably (5 %) faster."""
    plain = FastModel(inference)
    compiled = torch.compile(inference, options={"freezing": True})
    candidate = FastModel(inference, compiled=compiled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidate(x)  # compiles
    if mode != "auto":
        return candidate
    t_plain = measure_throughput(plain, x, repeats=3, warmup=1)["latency_ms"]
    t_comp = measure_throughput(candidate, x, repeats=3, warmup=1)["latency_ms"]
    return candidate if t_comp < 0.95 * t_plain else plain


# -- onnxruntime ------------------------------------------------------------------------


class OnnxRuntimeModel(nn.Module):
    """An onnxruntime CPU session behind a module's interface: a float (N, C, H, W)
    torch tensor in, logits as a torch tensor out (on the input's device)."""

    def __init__(self, session: Any, threads: int):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.threads = threads
        self.backend = "onnxruntime"

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"intra_op_num_threads={self.threads}"

    def __deepcopy__(self, memo):
        raise TypeError("an onnxruntime session cannot be copied; call optimize() again")


def _build_onnxruntime(model: nn.Module, example: Tensor, threads: int) -> OnnxRuntimeModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConvzooError(
            "the onnxruntime backend needs onnx and onnxruntime: pip install 'convzoo[onnx]'"
        ) from None
    from .onnx_io import exportable, onnx_export

    with tempfile.TemporaryDirectory(prefix="convzoo-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        with exportable(model) as m:
            onnx_export(m, example[:2].detach().float().cpu().contiguous(), path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    return OnnxRuntimeModel(session, threads)


# -- a trained model ---------------------------------------------------------------------

# What a checkpoint's "data" entry must say for its model to be used on new images.
DATA_KEYS = ("dataset", "classes", "mean", "std", "image_size", "in_channels")


def load_trained(
    target, *, which: str = "best", use_ema: bool = True, device: str | torch.device = "auto"
) -> tuple[Path, dict, nn.Module, torch.device]:
    """(checkpoint path, checkpoint dict, model in eval mode on the device, device) of a
    run directory or checkpoint file, read through :mod:`convzoo.artifacts` and rebuilt
    through :mod:`convzoo.registry` (EMA weights when present, unless ``use_ema`` is
    false). :class:`~convzoo.errors.CheckpointError` when there is nothing usable."""
    from .artifacts import find_checkpoint, load_checkpoint
    from .device import resolve_device
    from .errors import CheckpointError
    from .registry import model_from_checkpoint

    device = resolve_device(device)
    path = Path(find_checkpoint(target, which))
    ckpt = load_checkpoint(path)
    data = ckpt.get("data")
    if not isinstance(data, dict) or any(k not in data for k in DATA_KEYS):
        raise CheckpointError(
            f"{path} lacks the description of its training data; give a checkpoint written "
            "by `convzoo train`"
        )
    model = model_from_checkpoint(ckpt, use_ema=use_ema).to(device).eval()
    return path, ckpt, model, device


def evaluate_test_set(
    model: nn.Module,
    ckpt: dict,
    device: torch.device,
    *,
    backend: str = "fast",
    tta: bool = False,
    data_dir=None,
    batch_size: int = 512,
):
    """The :class:`~convzoo.evaluate.EvalResult` of ``model`` (from :func:`load_trained`)
    on the test set of the data it was trained on, run through ``backend``."""
    from .data.loader import Loader
    from .evaluate import evaluate, load_training_data

    data = ckpt["data"]
    ds = load_training_data(data, data_dir)
    loader = Loader(
        ds.test_images,
        ds.test_labels,
        batch_size=batch_size,
        mean=data["mean"],
        std=data["std"],
        device=device,
        resize=data.get("resize"),
    )
    runner = optimize(model, next(iter(loader))[0], backend)
    return evaluate(runner, loader, len(data["classes"]), tta=tta)


def load_images(paths: list[str], data: dict) -> Tensor:
    """uint8 (N, C, H, W): each image file converted as the training images were
    (``data`` is a checkpoint's data entry)."""
    from .data.datasets import load_image
    from .errors import DataError

    size = tuple(int(s) for s in data["image_size"])
    images = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"{name}: no such image file; give the path of a PNG or JPEG file")
        images.append(load_image(path, int(data["in_channels"]), size))
    return torch.stack(images)


def classify_images(
    model: nn.Module,
    ckpt: dict,
    device: torch.device,
    paths: list[str],
    *,
    backend: str = "fast",
    tta: bool = False,
    topk: int = 3,
) -> list[dict[str, Any]]:
    """The ``topk`` classes of each image file: ``{"image", "top": [{"class", "index",
    "probability"}, ...]}`` per file, in order."""
    from .data.loader import Loader
    from .evaluate import predict_logits

    data = ckpt["data"]
    classes = [str(c) for c in data["classes"]]
    images = load_images(paths, data)
    loader = Loader(
        images,
        torch.zeros(len(images), dtype=torch.long),
        batch_size=256,
        mean=data["mean"],
        std=data["std"],
        device=device,
        resize=data.get("resize"),
    )
    runner = optimize(model, next(iter(loader))[0], backend)
    logits, _ = predict_logits(runner, loader, tta=tta)
    probs, indices = logits.softmax(dim=1).topk(min(topk, len(classes)), dim=1)
    return [
        {
            "image": name,
            "top": [
                {"class": classes[int(i)], "index": int(i), "probability": float(p)}
                for p, i in zip(ps, ids, strict=True)
            ],
        }
        for name, ps, ids in zip(paths, probs, indices, strict=True)
    ]


# -- the entry point --------------------------------------------------------------------


def optimize(
    model: nn.Module,
    example_input: Tensor,
    backend: str = "fast",
    *,
    threads: int | None = None,
    compile: bool | str = False,
) -> nn.Module:
    """An inference form of ``model`` (see the module docstring for each backend).

    Args:
        model: a convzoo model (any ``nn.Module`` of Conv2d/BatchNorm2d/ReLU/... works;
            the ResNet and DenseNet blocks get their own rewrites) in eval mode.
        example_input: a float batch (N, C, H, W) like the ones the result will see; it
            sets the shapes the "fast" weights are laid out for and the ONNX graph's
            input. Other batch sizes work with every backend.
        backend: "fast" (default), "onnxruntime" or "eager".
        threads: onnxruntime's intra-op threads (default: ``torch.get_num_threads()``).
        compile: "fast" only: ``True`` adds ``torch.compile`` (slow to compile), ``"auto"``
            compiles and keeps it only if measurably faster on ``example_input``.

    Returns a module (the model itself for "eager"); ``model`` is not modified.
    Raises ModelError for a model in training mode, ConfigError for an unknown backend.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not isinstance(model, nn.Module):
        raise ModelError(f"optimize needs a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ModelError(
            "the model is in training mode; call model.eval() before optimizing it "
            "(batch norm is folded with its running statistics, which only eval mode uses)"
        )
    if not isinstance(example_input, Tensor) or example_input.dim() != 4:
        shape = tuple(example_input.shape) if isinstance(example_input, Tensor) else None
        raise ModelError(f"example_input must be a batch of images (N, C, H, W), got {shape}")
    if compile not in (False, True, "auto"):
        raise ConfigError(f"compile must be True, False or 'auto', got {compile!r}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be positive, got {threads}")
    example = example_input.detach()
    if not example.is_floating_point():
        example = example.float()
    if backend == "eager":
        return model
    device = next((t.device for t in (*model.parameters(), *model.buffers())), example.device)
    example = example.to(device)
    if backend == "onnxruntime":
        return _build_onnxruntime(model, example, threads or torch.get_num_threads())
    return _build_fast(model, example, compile=compile)


# -- checking and timing ----------------------------------------------------------------


def _first(out) -> Tensor:
    return out[0] if isinstance(out, tuple | list) else out


def max_relative_error(got: Tensor, ref: Tensor) -> float:
    """``max |got - ref| / (RTOL * |ref| + ATOL_SCALE * max|ref|)`` times RTOL: below
    RTOL (1e-4) exactly when :func:`outputs_match` holds."""
    got, ref = got.detach().float().cpu(), ref.detach().float().cpu()
    floor = ATOL_SCALE * max(float(ref.abs().max()), 1e-12)
    ratio = (got - ref).abs() / (RTOL * ref.abs() + floor)
    return float(ratio.max()) * RTOL


def outputs_match(got: Tensor, ref: Tensor) -> bool:
    """``|got - ref| <= 1e-4 * |ref| + 1e-5 * max|ref|`` everywhere (and equal shapes)."""
    got, ref = _first(got), _first(ref)
    if got.shape != ref.shape:
        return False
    return max_relative_error(got, ref) <= RTOL


def measure_throughput(
    model_or_callable: nn.Module | Callable[[Tensor], Any],
    example_input: Tensor,
    *,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Time ``model_or_callable(example_input)``: ``warmup`` untimed calls, then
    ``repeats`` timed ones (in ``torch.inference_mode``; a module is put in eval mode
    for the measurement and given its modes back afterwards).

    Returns a dict: ``images_per_second`` (batch size / median latency), ``latency_ms``
    (median seconds per batch, in ms), ``latency_min_ms``, ``latency_max_ms``,
    ``batch_size``, ``repeats``, ``warmup``, ``times_s`` (every timed call).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be a positive whole number, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be a whole number >= 0, got {warmup!r}")
    if not isinstance(example_input, Tensor) or example_input.dim() < 1:
        raise ModelError("example_input must be a batch tensor")
    from .evaluate import eval_mode

    fn = model_or_callable
    ctx = eval_mode(fn) if isinstance(fn, nn.Module) else contextlib.nullcontext()
    device = example_input.device
    times: list[float] = []
    with ctx, torch.inference_mode():
        for _ in range(warmup):
            fn(example_input)
            synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            fn(example_input)
            synchronize(device)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    batch = int(example_input.shape[0])
    return {
        "images_per_second": batch / median if median > 0 else math.inf,
        "latency_ms": median * 1e3,
        "latency_min_ms": min(times) * 1e3,
        "latency_max_ms": max(times) * 1e3,
        "batch_size": batch,
        "repeats": repeats,
        "warmup": warmup,
        "times_s": times,
    }
