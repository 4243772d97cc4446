"""What a report learns by running a trained model again.

For one finished run: the final weights (``checkpoints/last.pt``, EMA weights when the
run kept them: the model whose test accuracy result.json reports), the test set it was
trained for, its predictions on that test set (confusion matrix, per-class accuracy,
the most confidently misclassified images), its anatomy (:func:`convzoo.summary`) and
its inference speed on this machine.

Nothing here is fatal: a part that cannot be computed (checkpoint gone, dataset moved)
leaves a note saying why, and the report shows what it has.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..artifacts import load_checkpoint, read_safetensors_header
from ..device import resolve_device, synchronize
from ..errors import CheckpointError, ConvzooError
from ..registry import model_from_checkpoint, model_from_safetensors
from .runs import Run

__all__ = ["Mistake", "Optimizer", "RunAnalysis", "analyse_run", "measure_speed"]

SPEED_BATCH = 64
EVAL_BATCH = 256

# Turns (model, example batch, backend=NAME) into a faster callable, such as
# convzoo.infer.optimize; handed in by the caller, since report does not import infer.
Optimizer = Callable[..., Any]


@dataclass
class Mistake:
    """A misclassified test image."""

    index: int  # in the test set
    image: Any  # uint8 numpy array (C, H, W), as stored
    true: int
    predicted: int
    confidence: float  # softmax probability of the predicted class


@dataclass
class RunAnalysis:
    """The figures of one run that need the model; None where they could not be had."""

    classes: list[str] | None = None
    confusion: list[list[int]] | None = None
    per_class_accuracy: list[float | None] | None = None
    accuracy: float | None = None  # recomputed on the test set
    test_images: int | None = None
    mistakes: list[Mistake] = field(default_factory=list)
    summary: Any = None  # convzoo.anatomy.Summary
    speed: dict[str, Any] | None = None  # images_per_second, backend, batch, input_size
    weights: str | None = None  # where the weights came from
    notes: list[str] = field(default_factory=list)


def load_final_model(run: Run) -> tuple[nn.Module, dict, str]:
    """(model in eval mode on the CPU, its data description, where the weights came from).

    ``checkpoints/last.pt`` first (EMA weights when present), else ``model.safetensors``;
    both hold the final weights of a finished run. Both are rebuilt through
    :mod:`convzoo.registry`, which checks the stored shapes on the meta device first: a
    small file that claims a huge model is refused before memory is spent on it.
    """
    last = run.checkpoint("last")
    problems = []
    if last.is_file():
        try:
            ckpt = load_checkpoint(last)
            model = model_from_checkpoint(ckpt, use_ema=True)
            return model, dict(ckpt["data"]), str(last)
        except (ConvzooError, KeyError, TypeError, ValueError) as exc:
            problems.append(str(exc))
    else:
        problems.append(f"no {last}")
    st = run.model_file
    if st.is_file():
        try:
            model, meta = model_from_safetensors(st)
            return model, meta, str(st)
        except ConvzooError as exc:
            problems.append(str(exc))
    else:
        problems.append(f"no {st}")
    raise CheckpointError("; ".join(problems))


def data_description(run: Run) -> dict | None:
    """The run's data description (classes, mean, std, sizes) without loading weights."""
    try:
        return read_safetensors_header(run.model_file)[0]
    except CheckpointError:
        pass
    try:
        return dict(load_checkpoint(run.checkpoint("last"))["data"])
    except (ConvzooError, KeyError, TypeError, ValueError):
        return None


def analyse_run(
    run: Run,
    *,
    model: nn.Module | None = None,
    dataset=None,
    device: str | torch.device = "cpu",
    speed: bool = True,
    mistakes: int = 16,
    data_dir: str | None = None,
    data_cache: dict | None = None,
    speed_seconds: float = 1.0,
    test_logits: tuple[torch.Tensor, torch.Tensor] | None = None,
    optimize: Optimizer | None = None,
) -> RunAnalysis:
    """Run ``run``'s final model on its test set, summarise it and time it.

    ``model`` and ``dataset`` may be given when they are already in memory (at the end
    of training); otherwise they are loaded from the run directory and from where the
    run found its data (``data_dir`` overrides that). ``data_cache`` (a dict) shares
    loaded datasets between runs. ``test_logits`` (logits, labels), when the caller has
    just computed them for ``dataset``'s whole test set, saves running the model again.
    ``optimize`` (such as :func:`convzoo.infer.optimize`) is what the speed is measured
    with; without it the eager model is timed.
    """
    from ..anatomy import summary
    from ..data.loader import Loader
    from ..evaluate import load_training_data, metrics_from_logits, predict_logits

    out = RunAnalysis()
    device = resolve_device(device)
    data = None
    loaded = model is None
    if loaded:
        try:
            model, data, out.weights = load_final_model(run)
        except ConvzooError as exc:
            out.notes.append(f"the trained model could not be loaded: {exc}")
    else:
        out.weights = "the model in memory at the end of training"
    if data is None:
        data = data_description(run)
    if data is not None:
        out.classes = [str(c) for c in data.get("classes", [])] or None
    if model is None:
        return out
    if loaded:
        model = model.to(device)  # a model handed in stays where it is
    model = model.eval()
    model_device = next(model.parameters()).device

    # Anatomy
    input_size = run.result.get("input_size")
    if not input_size and data is not None:
        resize = data.get("resize")
        h, w = (resize, resize) if resize else data["image_size"]
        input_size = [int(data["in_channels"]), int(h), int(w)]
    if input_size:
        try:
            out.summary = summary(model, tuple(int(s) for s in input_size))
        except Exception as exc:  # noqa: BLE001 - reported as a note
            out.notes.append(f"the anatomy summary failed: {exc}")

    # Test-set predictions
    if data is None:
        out.notes.append("the run does not describe its data; no test-set figures")
    else:
        ds = dataset
        if ds is None:
            key = json.dumps(
                [data.get("dataset"), data_dir or data.get("data_dir"), data.get("image_size")]
            )
            cache = data_cache if data_cache is not None else {}
            try:
                if key not in cache:
                    cache[key] = load_training_data(data, data_dir)
                ds = cache[key]
            except ConvzooError as exc:
                out.notes.append(f"the test set could not be loaded: {exc}")
        if ds is not None and test_logits is not None and dataset is not None:
            logits, labels = (t.detach().float().cpu() for t in test_logits)
            labels = labels.long()
        elif ds is not None:
            loader = Loader(
                ds.test_images,
                ds.test_labels,
                batch_size=EVAL_BATCH,
                mean=data["mean"],
                std=data["std"],
                device=model_device,
                resize=data.get("resize"),
            )
            logits, labels = predict_logits(model, loader)
        if ds is not None:
            res = metrics_from_logits(logits, labels, len(ds.classes))
            out.classes = list(ds.classes)
            out.confusion = res.confusion
            out.per_class_accuracy = res.to_dict()["per_class_accuracy"]
            out.accuracy = res.accuracy
            out.test_images = res.num_samples
            recorded = run.result.get("test_accuracy")
            if isinstance(recorded, (int, float)) and abs(recorded - res.accuracy) > 1e-3:
                out.notes.append(
                    f"the test accuracy measured now ({res.accuracy:.2%}) differs from the "
                    f"one recorded at the end of training ({recorded:.2%})"
                )
            out.mistakes = _worst_mistakes(logits, labels, ds.test_images, mistakes)

    # Inference speed
    if speed and input_size:
        try:
            out.speed = measure_speed(
                model,
                input_size,
                device=model_device,
                optimize=optimize,
                min_seconds=speed_seconds,
            )
            if out.speed.get("fallback_reason"):
                out.notes.append(f"timed with the eager model: the {out.speed['fallback_reason']}")
        except Exception as exc:  # noqa: BLE001 - reported as a note
            out.notes.append(f"the inference speed could not be measured: {exc}")
    return out


def _worst_mistakes(logits, labels, images, k: int) -> list[Mistake]:
    """The ``k`` misclassified images the model was most confident about."""
    if k <= 0:
        return []
    probs = logits.float().softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    if wrong.numel() == 0:
        return []
    order = confidence[wrong].argsort(descending=True, stable=True)[:k]
    chosen = wrong[order]
    return [
        Mistake(
            index=int(i),
            image=images[int(i)].cpu().numpy(),
            true=int(labels[i]),
            predicted=int(predicted[i]),
            confidence=float(confidence[i]),
        )
        for i in chosen
    ]


def measure_speed(
    model: nn.Module,
    input_size,
    *,
    batch: int = SPEED_BATCH,
    device: str | torch.device = "cpu",
    optimize: Optimizer | None = None,
    backend: str = "fast",
    min_seconds: float = 1.0,
    warmup: int = 3,
    repeats: int = 5,
) -> dict[str, Any]:
    """Inference images per second of ``model`` on batches of ``batch`` images.

    With ``optimize`` (such as :func:`convzoo.infer.optimize`), the model is first
    optimised for ``backend``; otherwise (or when optimising fails, which the result's
    ``fallback_reason`` says) the eager model is timed. Either way: ``warmup`` batches,
    then the median of at least ``repeats`` batches and ``min_seconds`` of timing. The
    model is copied first: it is left as it was.
    """
    device = resolve_device(device)
    c, h, w = (int(s) for s in input_size)
    example = torch.randn(batch, c, h, w, device=device)
    model = copy.deepcopy(model).to(device).eval()
    result: dict[str, Any] = {"batch": batch, "input_size": [c, h, w], "device": str(device)}
    run: Callable[[torch.Tensor], Any] = model
    used = "eager"
    if backend != "eager" and optimize is not None:
        try:
            run = optimize(model, example, backend=backend)
            used = backend
        except Exception as exc:  # noqa: BLE001 - fall back to eager timing, noted
            result["fallback_reason"] = f"{backend} backend failed: {exc}"
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            run(example)
        synchronize(device)
        started = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - started < min_seconds:
            t0 = time.perf_counter()
            run(example)
            synchronize(device)
            times.append(time.perf_counter() - t0)
            if len(times) >= 1000:
                break
    result.update(
        images_per_second=batch / max(statistics.median(times), 1e-9),
        backend=used,
        timer="convzoo.report (median of timed batches)",
        batches_timed=len(times),
    )
    return result
