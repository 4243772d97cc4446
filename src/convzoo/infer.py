"""Inference backends: batch norm folded into fused oneDNN convolutions, channels-last
memory, onnxruntime, and lower precision (bf16, int8) behind an accuracy gate.

:func:`optimize` turns a trained model (in eval mode) into an inference-only copy:

* ``"eager"``: the model itself, unchanged (the reference).
* ``"fast"`` (the default): the rewritten deep copy of :func:`convzoo.fold.fold_model`
  (batch norm folded into the convolutions, ReLU and ResNet's shortcut addition fused
  as oneDNN post-ops, prepacked weights, channels-last; see :mod:`convzoo.fold`).
  ``compile=True`` adds ``torch.compile`` (inductor, with weight freezing) on top; it is
  off by default because compiling takes tens of seconds on a small CPU and recompiles
  for every new batch size.
* ``"onnxruntime"``: the model exported with :mod:`convzoo.onnx_io` (the exporter
  ``convzoo export`` uses) and run by an onnxruntime CPU session with ``threads``
  intra-op threads; called with a torch tensor, it returns a torch tensor.
* ``"bf16"`` and ``"int8"``: approximate (:mod:`convzoo.lowp`): the "fast" rewrite in
  bfloat16, and onnxruntime static int8 quantization calibrated on ``calibration``
  (training images).

The three exact backends compute the same function: outputs agree with the eager model
to 1e-4 (relative, with an absolute floor of 1e-5 of the largest output). The
approximate ones do not; for a trained model :func:`prepare_backend` measures them on
the run's validation split against float32 and refuses them when they lose more than
``max_accuracy_drop`` points, and ``"auto"`` picks the fastest backend that passed, or
"fast" when none is faster. A model in training mode is refused
(:class:`~convzoo.errors.ModelError`): folding uses the running statistics, which a
model in training mode does not use. The caller's model is never modified.

:func:`measure_throughput` times repeated calls after a warm-up (median latency per
batch, images per second).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .device import synchronize
from .errors import ConfigError, ModelError
from .fold import FusedConv2d, ScaleShift, _rewrite, fold_batch_norm, fold_model, fold_report
from .lowp import (
    DEFAULT_MAX_DROP,
    LOWP_BACKENDS,
    build_bf16,
    build_int8,
    calibration_batch,
    check_gate,
    held_out,
    normalised_batches,
)
from .onnx_io import OnnxRuntimeModel

__all__ = [
    "AUTO",
    "BACKENDS",
    "DEFAULT_MAX_DROP",
    "FastModel",
    "FusedConv2d",
    "OnnxRuntimeModel",
    "ScaleShift",
    "classify_images",
    "evaluate_test_set",
    "fold_batch_norm",
    "fold_report",
    "load_images",
    "load_trained",
    "max_relative_error",
    "measure_throughput",
    "optimize",
    "outputs_match",
    "prepare_backend",
]

EXACT_BACKENDS = ("eager", "fast", "onnxruntime")
BACKENDS = (*EXACT_BACKENDS, *LOWP_BACKENDS)
AUTO = "auto"  # for a trained model: the fastest backend that passes the accuracy gate
# |got - ref| <= RTOL * |ref| + ATOL_SCALE * max|ref|: the agreement every backend keeps.
RTOL = 1e-4
ATOL_SCALE = 1e-5


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
    if compile:
        import copy

        inference = _rewrite(copy.deepcopy(model)).eval()
        for p in inference.parameters():
            p.requires_grad_(False)
        inference.to(memory_format=torch.channels_last)
        x = example.contiguous(memory_format=torch.channels_last)
        return _compiled_fast(inference, x, mode=compile)
    return FastModel(fold_model(model, example))


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


def _build_onnxruntime(model: nn.Module, example: Tensor, threads: int) -> OnnxRuntimeModel:
    from .onnx_io import exportable, onnx_export, ort_session

    with tempfile.TemporaryDirectory(prefix="convzoo-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        with exportable(model) as m:
            onnx_export(m, example[:2].detach().float().cpu().contiguous(), path)
        session = ort_session(path, threads)
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


def _loader(images: Tensor, labels: Tensor, data: dict, device, batch_size: int):
    return normalised_batches(images, labels, data, device, batch_size)


def prepare_backend(
    model: nn.Module,
    ckpt: dict,
    device: torch.device,
    example: Tensor,
    backend: str = "fast",
    *,
    max_accuracy_drop: float = DEFAULT_MAX_DROP,
    data_dir=None,
    threads: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """``(runner, info)``: ``model`` (from :func:`load_trained`) in the inference form
    ``backend`` asks for, and what was decided.

    Exact backends are built as :func:`optimize` builds them. "bf16" and "int8" are
    built (int8 calibrated on training images of the run), then measured against
    float32 on the run's validation split (:func:`convzoo.lowp.held_out`):
    :class:`~convzoo.lowp.AccuracyGateError` when they lose more than
    ``max_accuracy_drop`` points. "auto" times "fast", "bf16" and "int8" on ``example``
    and takes the fastest one that is faster than "fast" and passes the gate, else
    "fast". ``info``: ``backend`` (the one that runs), ``requested``,
    ``accuracy_gate`` (the measured figures; None for an exact backend) and, for
    "auto", ``timings`` (images/s on ``example``) and ``refused`` (gate failures).
    """
    from .lowp import AccuracyGateError

    if backend not in (*BACKENDS, AUTO):
        raise ConfigError(
            f"unknown backend {backend!r}; expected one of {', '.join((*BACKENDS, AUTO))}"
        )
    check_gate("check", {"drop_points": 0.0}, max_accuracy_drop)  # the threshold itself
    info: dict[str, Any] = {"backend": backend, "requested": backend, "accuracy_gate": None}
    if backend in EXACT_BACKENDS:
        return optimize(model, example, backend, threads=threads), info
    data = ckpt["data"]
    held = held_out(ckpt, data_dir)
    calibration = calibration_batch(held, data)
    val = _loader(held.val_images, held.val_labels, data, device, 256)

    def gated(name: str, runner: nn.Module) -> dict[str, Any]:
        from .lowp import measure_gate

        return check_gate(name, measure_gate(model, runner, val), max_accuracy_drop)

    def build(name: str) -> nn.Module:
        return optimize(model, example, name, threads=threads, calibration=calibration)

    if backend != AUTO:
        runner = build(backend)
        info["accuracy_gate"] = gated(backend, runner)
        return runner, info
    fast = optimize(model, example, "fast", threads=threads)
    timings = {"fast": measure_throughput(fast, example, repeats=3, warmup=1)}
    runners: dict[str, nn.Module] = {"fast": fast}
    for name in LOWP_BACKENDS:
        runners[name] = build(name)
        timings[name] = measure_throughput(runners[name], example, repeats=3, warmup=1)
    speed = {k: t["images_per_second"] for k, t in timings.items()}
    info["timings"] = speed
    info["refused"] = {}
    for name in sorted(LOWP_BACKENDS, key=lambda k: -speed[k]):
        if speed[name] <= speed["fast"]:
            break  # slower than exact "fast": never chosen
        try:
            info["accuracy_gate"] = gated(name, runners[name])
        except AccuracyGateError as exc:
            info["refused"][name] = str(exc)
            continue
        info["backend"] = name
        return runners[name], info
    info["backend"] = "fast"
    return fast, info


def evaluate_test_set(
    model: nn.Module,
    ckpt: dict,
    device: torch.device,
    *,
    backend: str = "fast",
    tta: bool = False,
    data_dir=None,
    batch_size: int = 512,
    max_accuracy_drop: float = DEFAULT_MAX_DROP,
    info: dict | None = None,
):
    """The :class:`~convzoo.evaluate.EvalResult` of ``model`` (from :func:`load_trained`)
    on the test set of the data it was trained on, run through ``backend`` (prepared by
    :func:`prepare_backend`, whose ``info`` is copied into ``info`` when given)."""
    from .evaluate import evaluate, load_training_data

    data = ckpt["data"]
    ds = load_training_data(data, data_dir)
    loader = _loader(ds.test_images, ds.test_labels, data, device, batch_size)
    runner, decided = prepare_backend(
        model, ckpt, device, next(iter(loader))[0], backend,
        max_accuracy_drop=max_accuracy_drop, data_dir=data_dir,
    )  # fmt: skip
    if info is not None:
        info.update(decided)
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
    data_dir=None,
    max_accuracy_drop: float = DEFAULT_MAX_DROP,
    info: dict | None = None,
) -> list[dict[str, Any]]:
    """The ``topk`` classes of each image file: ``{"image", "top": [{"class", "index",
    "probability"}, ...]}`` per file, in order. ``backend`` is prepared by
    :func:`prepare_backend` (bf16, int8 and auto need the run's dataset, for the gate)."""
    from .evaluate import predict_logits

    data = ckpt["data"]
    classes = [str(c) for c in data["classes"]]
    images = load_images(paths, data)
    loader = _loader(images, torch.zeros(len(images), dtype=torch.long), data, device, 256)
    runner, decided = prepare_backend(
        model, ckpt, device, next(iter(loader))[0], backend,
        max_accuracy_drop=max_accuracy_drop, data_dir=data_dir,
    )  # fmt: skip
    if info is not None:
        info.update(decided)
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
    calibration: Tensor | None = None,
) -> nn.Module:
    """An inference form of ``model`` (see the module docstring for each backend).

    Args:
        model: a convzoo model (any ``nn.Module`` of Conv2d/BatchNorm2d/ReLU/... works;
            the ResNet and DenseNet blocks get their own rewrites) in eval mode.
        example_input: a float batch (N, C, H, W) like the ones the result will see; it
            sets the shapes the "fast" weights are laid out for and the ONNX graph's
            input. Other batch sizes work with every backend.
        backend: "fast" (default), "onnxruntime", "eager", "bf16" or "int8" (the last two
            approximate: check them with :func:`convzoo.lowp.measure_gate`).
        threads: onnxruntime's intra-op threads (default: ``torch.get_num_threads()``).
        compile: "fast" only: ``True`` adds ``torch.compile`` (slow to compile), ``"auto"``
            compiles and keeps it only if measurably faster on ``example_input``.
        calibration: "int8" only, required: normalised training images (N, C, H, W)
            whose activation ranges set the quantization (never test images).

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
    if backend == "bf16":
        return build_bf16(model, example)
    if backend == "int8":
        if calibration is None:
            raise ConfigError(
                "the int8 backend needs calibration images: pass calibration= a batch of "
                "normalised training images"
            )
        return build_int8(model, example, calibration, threads or torch.get_num_threads())
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
