"""Lower-precision inference: the "bf16" and "int8" backends of :mod:`convzoo.infer`,
what this CPU runs natively, and the accuracy gate that every approximate backend must
pass on held-out images before it is used.

* ``"bf16"``: the "fast" rewrite (:func:`convzoo.fold.fold_model`: batch norm folded in
  float64, ReLU and ResNet's shortcut addition fused as oneDNN post-ops, channels-last)
  with the folded weights rounded once to bfloat16 and bfloat16 activations; logits come
  back as float32. bfloat16 keeps float32's exponent and 8 bits of mantissa, so the
  logits differ from float32 by about 1e-2 relative: close, not equal.
* ``"int8"``: post-training static quantization (Jacob et al. 2018) with onnxruntime's
  ``quantize_static``: QDQ format, weights int8 per output channel, activations uint8
  per tensor with MinMax ranges calibrated on training images (never test images), the
  first convolution and the classifier left in float32, and
  ``reduce_range`` (7-bit weights) on a CPU without VNNI, where the 16-bit
  intermediate sums of the AVX2 kernels could otherwise saturate. The choice of
  onnxruntime over PyTorch's PT2E path is argued, with figures, in docs/inference.md.

The gate (:func:`measure_gate`, :func:`check_gate`) runs the float32 model and the
approximate one over the same held-out images (a run's validation split,
:func:`held_out`) and reports the top-1 agreement and the accuracy drop in points;
a drop over the threshold (default 0.2 points) raises :class:`AccuracyGateError`.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError, ConvzooError, DataError, ModelError
from .fold import fold_model
from .onnx_io import OnnxRuntimeModel, exportable, onnx_export, ort_session

__all__ = [
    "DEFAULT_MAX_DROP",
    "LOWP_BACKENDS",
    "AccuracyGateError",
    "Bf16Model",
    "HeldOut",
    "build_bf16",
    "build_int8",
    "calibration_batch",
    "check_gate",
    "cpu_precisions",
    "describe_precisions",
    "held_out",
    "measure_gate",
    "normalised_batches",
    "quantize_onnx",
]

LOWP_BACKENDS = ("bf16", "int8")
DEFAULT_MAX_DROP = 0.2  # accuracy points (percent) an approximate backend may lose
CALIBRATION_IMAGES = 512  # training images the int8 ranges are calibrated on
CALIBRATION_BATCH = 64


class AccuracyGateError(ConvzooError):
    """An approximate backend lost more accuracy on held-out images than allowed."""


# -- what the CPU runs natively ------------------------------------------------------------

# (flag in torch.cpu.get_capabilities(), name as printed, precision it speeds up)
_PATHS = (
    ("amx_bf16", "AMX-BF16", "bf16"),
    ("amx_int8", "AMX-INT8", "int8"),
    ("avx512_bf16", "AVX512-BF16", "bf16"),
    ("avx512_vnni", "AVX512-VNNI", "int8"),
    ("avx_vnni", "AVX-VNNI", "int8"),
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def cpu_precisions() -> dict[str, Any]:
    """Which precision paths this CPU runs natively, from torch's CPU-capability query
    (``torch.cpu.get_capabilities()``, and ``torch.backends.cpu.get_cpu_capability()``
    for the kernels torch dispatches to).

    Keys: ``cpu`` (model name), ``capability`` (e.g. "AVX512", "AVX2"), ``flags`` (the
    relevant flags, true or false), ``paths`` (e.g. ["AVX512-BF16", "AVX512-VNNI"], or
    ["AVX2 only"]), ``bf16_native``, ``int8_native``.
    """
    caps: dict = {}
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is not None:
        try:
            caps = dict(get())
        except Exception:  # noqa: BLE001 - an unknown architecture: no flags
            caps = {}
    flags = {flag: bool(caps.get(flag, False)) for flag, _, _ in _PATHS}
    flags["avx512_f"] = bool(caps.get("avx512_f", False))
    flags["avx2"] = bool(caps.get("avx2", False))
    paths = [name for flag, name, _ in _PATHS if flags[flag]]
    if not paths:
        paths = ["AVX512 (no bf16/int8 instructions)"] if flags["avx512_f"] else []
        paths = paths or (["AVX2 only"] if flags["avx2"] else ["no AVX2"])
    return {
        "cpu": _cpu_model(),
        "capability": str(torch.backends.cpu.get_cpu_capability()),
        "flags": flags,
        "paths": paths,
        "bf16_native": any(flags[f] for f, _, p in _PATHS if p == "bf16"),
        "int8_native": any(flags[f] for f, _, p in _PATHS if p == "int8"),
    }


def describe_precisions(info: dict[str, Any] | None = None) -> str:
    """One line: the CPU, its native bf16/int8 paths and torch's kernel capability."""
    info = info or cpu_precisions()
    yes = {True: "native", False: "emulated"}
    return (
        f"CPU {info['cpu']}: {', '.join(info['paths'])} (torch kernels: "
        f"{info['capability']}; bf16 {yes[info['bf16_native']]}, int8 "
        f"{'native' if info['int8_native'] else 'without VNNI'})"
    )


# -- bf16 ------------------------------------------------------------------------------------


class Bf16Model(nn.Module):
    """The ``"bf16"`` backend: the folded, fused, channels-last copy in bfloat16. Takes
    a float (N, C, H, W) batch, returns float32 logits (N, K)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.backend = "bf16"

    def forward(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            out = self.model(x)
            out = out[0] if isinstance(out, tuple | list) else out
            return out.float()

    def train(self, mode: bool = True) -> Bf16Model:
        if mode:
            raise ModelError("an optimized model is for inference only; train the original model")
        return super().train(False)


def build_bf16(model: nn.Module, example: Tensor) -> Bf16Model:
    """The bf16 form of ``model`` (eval mode, not modified), laid out for ``example``."""
    return Bf16Model(fold_model(model, example, torch.bfloat16))


# -- int8 ------------------------------------------------------------------------------------


def _batches(images: Tensor, batch: int) -> list[dict[str, Any]]:
    x = images.detach().to("cpu", torch.float32).contiguous()
    return [x[i : i + batch].numpy() for i in range(0, x.shape[0], batch)]


def quantize_onnx(
    src: str | Path, dst: str | Path, calibration: Tensor, *, reduce_range: bool | None = None
) -> dict[str, Any]:
    """Quantize the float32 ONNX model ``src`` into ``dst`` (QDQ, int8 weights per
    channel, uint8 activations, MinMax ranges from ``calibration``: normalised float
    (N, C, H, W) training images). ``reduce_range`` defaults to "this CPU lacks VNNI".

    The first convolution and the last layer (the classifier) stay in float32, as is
    usual in post-training quantization: the stem sees the raw input and the classifier's
    errors go straight into the logits. On a briefly trained resnet18 (64 % accurate,
    Fashion-MNIST validation split), quantizing them too cut the top-1 agreement with
    float32 from 96 % to 88 %; with them quantized, Percentile or Entropy calibration
    and symmetric int8 activations did no better than MinMax.

    Returns the settings as a JSON-ready dict (the calibration's description).
    """
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ConvzooError(
            "the int8 backend needs onnx and onnxruntime: pip install 'convzoo[onnx]'"
        ) from None
    if not isinstance(calibration, Tensor) or calibration.dim() != 4 or len(calibration) == 0:
        raise ConfigError("int8 calibration needs a non-empty batch of images (N, C, H, W)")
    if reduce_range is None:
        reduce_range = not cpu_precisions()["int8_native"]
    batches = _batches(calibration, CALIBRATION_BATCH)

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.name = name
            self.it = iter(batches)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {self.name: x}

    import logging

    import onnx

    # The quantizer logs through the root logger (e.g. a per-channel axis that a
    # pre-activation batch norm's 1-D weight lacks, which it then quantizes per tensor).
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="convzoo-int8-") as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            graph = onnx.load(str(pre), load_external_data=False).graph
            name = graph.input[0].name
            layers = [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
            keep = [layers[0], layers[-1]] if len(layers) > 2 else []
            quantize_static(
                str(pre),
                str(dst),
                Reader(name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=keep,
            )
    finally:
        logging.disable(previous)
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8, per output channel",
        "activations": "uint8, per tensor",
        "calibrate_method": "MinMax",
        "reduce_range": bool(reduce_range),
        "calibration_images": int(calibration.shape[0]),
        "float32_layers": keep,
    }


def build_int8(
    model: nn.Module, example: Tensor, calibration: Tensor, threads: int
) -> OnnxRuntimeModel:
    """The int8 form of ``model``: exported to ONNX, quantized with
    :func:`quantize_onnx` on ``calibration`` and run by an onnxruntime session."""
    with tempfile.TemporaryDirectory(prefix="convzoo-int8-") as tmp:
        fp32, q = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        with exportable(model) as m:
            onnx_export(m, example[:2].detach().float().cpu().contiguous(), fp32)
        info = quantize_onnx(fp32, q, calibration)
        runner = OnnxRuntimeModel(ort_session(q, threads), threads, backend="int8")
    runner.calibration = info
    return runner


# -- held-out images and the gate --------------------------------------------------------------


def normalised_batches(
    images: Tensor, labels: Tensor | None, data: dict, device="cpu", batch_size: int = 256
):
    """A :class:`~convzoo.data.loader.Loader` over uint8 ``images`` preprocessed as the
    run's were (``data``: a checkpoint's data entry: mean, std, resize)."""
    from .data.loader import Loader

    if labels is None:
        labels = torch.zeros(len(images), dtype=torch.long)
    return Loader(
        images,
        labels,
        batch_size=batch_size,
        mean=data["mean"],
        std=data["std"],
        device=device,
        resize=data.get("resize"),
    )


def calibration_batch(held: HeldOut, data: dict) -> Tensor:
    """The calibration images of ``held`` as one normalised float CPU batch."""
    images = held.calibration_images
    return next(iter(normalised_batches(images, None, data, "cpu", len(images))))[0]


@dataclass
class HeldOut:
    """A run's validation split and a sample of its training images (uint8, N C H W)."""

    val_images: Tensor
    val_labels: Tensor
    calibration_images: Tensor


def held_out(ckpt: dict, data_dir=None, *, calibration: int = CALIBRATION_IMAGES) -> HeldOut:
    """The validation split of the run ``ckpt`` belongs to, carved again exactly as
    training carved it (:func:`convzoo.data.loader.stratified_split` with the run's
    ``val_size`` and ``seed``), and ``calibration`` training images (a seeded sample of
    the split's training part, after ``limit_train``): never test images."""
    from .data.loader import stratified_split
    from .evaluate import load_training_data

    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    ds = load_training_data(ckpt["data"], data_dir)
    n = len(ds.train_labels)
    val_size = config.get("val_size")
    if val_size is None:
        raise DataError(
            "the checkpoint does not record its validation split, which the bf16 and int8 "
            "backends are checked on; use --backend fast"
        )
    val_n = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if val_n <= 0:
        raise DataError(
            "the run was trained without a validation split (--val-size 0), which the bf16 "
            "and int8 backends are checked on; use --backend fast"
        )
    train_idx, val_idx = stratified_split(ds.train_labels, val_n, int(config.get("seed", 0)))
    limit = config.get("limit_train")
    if limit is not None:
        train_idx = train_idx[: int(limit)]
    g = torch.Generator().manual_seed(int(config.get("seed", 0)))
    pick = train_idx[torch.randperm(len(train_idx), generator=g)[:calibration]].sort().values
    return HeldOut(
        ds.train_images.index_select(0, val_idx),
        ds.train_labels.index_select(0, val_idx),
        ds.train_images.index_select(0, pick),
    )


def measure_gate(
    reference: nn.Module, candidate: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]
) -> dict[str, Any]:
    """Top-1 agreement and accuracy of ``candidate`` against the float32 ``reference``
    over labelled ``batches`` of normalised images.

    Returns ``images``, ``agreement`` (fraction of images where both give the same
    top-1 class), ``reference_accuracy``, ``accuracy`` (fractions) and ``drop_points``
    (reference minus candidate accuracy, in percentage points; negative = a gain).
    """
    from .evaluate import eval_mode

    n = same = ref_ok = cand_ok = 0
    with eval_mode(reference), torch.inference_mode():
        for x, y in batches:
            a = _logits(reference(x)).argmax(dim=1).cpu()
            b = _logits(candidate(x)).argmax(dim=1).cpu()
            y = y.cpu().long()
            n += len(y)
            same += int((a == b).sum())
            ref_ok += int((a == y).sum())
            cand_ok += int((b == y).sum())
    if n == 0:
        raise DataError("the accuracy gate got no images")
    return {
        "images": n,
        "agreement": same / n,
        "reference_accuracy": ref_ok / n,
        "accuracy": cand_ok / n,
        "drop_points": (ref_ok - cand_ok) / n * 100,
    }


def _logits(out) -> Tensor:
    return (out[0] if isinstance(out, tuple | list) else out).float()


def check_gate(backend: str, figures: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """``figures`` (from :func:`measure_gate`) with ``backend``, ``max_drop_points`` and
    ``passed``; :class:`AccuracyGateError` with the figures when the drop exceeds
    ``max_drop`` points."""
    if not isinstance(max_drop, int | float) or math.isnan(max_drop) or max_drop < 0:
        raise ConfigError(f"--max-accuracy-drop must be a number of points >= 0, got {max_drop}")
    drop = figures["drop_points"]
    passed = drop <= max_drop + 1e-9
    out = {"backend": backend, **figures, "max_drop_points": float(max_drop), "passed": passed}
    if not passed:
        raise AccuracyGateError(
            f"the {backend} backend loses {drop:.2f} accuracy points on {figures['images']} "
            f"validation images ({figures['reference_accuracy']:.2%} in float32, "
            f"{figures['accuracy']:.2%} in {backend}; top-1 agreement "
            f"{figures['agreement']:.2%}), more than --max-accuracy-drop {max_drop:g}; use "
            "--backend fast (exact) or allow a larger drop"
        )
    return out
