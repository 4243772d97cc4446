"""``explain_run``: the class activation maps, top-k predictions, first-layer filters and
feature maps of a trained run, written as PNG files and one HTML page."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifacts import (
    atomic_write_bytes,
    atomic_write_text,
    find_checkpoint,
    load_checkpoint,
    load_run,
    refuse_overwrite,
    write_json,
)
from ..data.loader import Loader
from ..device import resolve_device
from ..errors import CheckpointError, ConfigError
from ..evaluate import load_training_data, predict_logits
from ..registry import model_from_checkpoint
from . import figures
from .features import feature_maps, map_tiles
from .filters import filter_tiles, first_conv
from .gradcam import grad_cam
from .images import load_images, pick_examples
from .layers import default_layer, find_layer, require_maps, stages

__all__ = ["Example", "Explained", "explain_run", "test_probabilities"]

SCALE = 4  # how many times small images (up to 64 px) are enlarged on the page
FEATURE_CHANNELS = 16


@dataclass
class Example:
    """One explained image: where it came from, its classes and its picture's file."""

    name: str  # the file name as given, or "test image #i"
    kind: str  # "given", "right", "mistake" or "chosen"
    true_class: str | None
    top: list[tuple[str, float]]  # (class, probability), most probable first
    cam_file: str  # image | overlay, side by side
    index: int | None = None  # in the test set, for a test image


@dataclass
class Stage:
    name: str
    shape: tuple[int, int, int]
    file: str
    shown: int  # channels shown


@dataclass
class Explained:
    """What ``explain_run`` computed and wrote; rendered by :mod:`convzoo.explain.page`."""

    run_dir: Path
    out_dir: Path
    model: str
    dataset: str
    classes: list[str]
    test_accuracy: float | None
    layer: str
    layer_default: bool
    examples: list[Example] = field(default_factory=list)
    filters_layer: str = ""
    filters_shape: tuple[int, ...] = ()
    filters_file: str = ""
    feature_image: str = ""
    stages: list[Stage] = field(default_factory=list)
    command: str = ""
    page: Path | None = None


def load_trained_run(run_dir: str | os.PathLike, device: torch.device, which: str = "best"):
    """(checkpoint dict, model in eval mode on ``device``) of a finished run."""
    run = load_run(run_dir)  # ConfigError: missing, a file, or not finished
    ckpt = load_checkpoint(find_checkpoint(run.path, which))
    data = ckpt.get("data")
    needed = ("dataset", "classes", "mean", "std", "image_size", "in_channels")
    if not isinstance(data, dict) or any(k not in data for k in needed):
        raise CheckpointError(f"{run.path}'s checkpoint lacks the description of its data")
    return run, ckpt, model_from_checkpoint(ckpt).to(device).eval()


def _batch(images: torch.Tensor, data: dict, device: torch.device) -> torch.Tensor:
    """The normalised (and resized) batch the model takes, as training made it."""
    loader = Loader(
        images,
        torch.zeros(len(images), dtype=torch.long),
        batch_size=max(1, len(images)),
        mean=data["mean"],
        std=data["std"],
        device=device,
        resize=data.get("resize"),
    )
    return next(iter(loader))[0]


def _test_logits(model, data: dict, device: torch.device, data_dir: str | None):
    """(dataset, logits, labels) of the model on its dataset's whole test set."""
    ds = load_training_data(data, data_dir)
    loader = Loader(
        ds.test_images,
        ds.test_labels,
        batch_size=512,
        mean=data["mean"],
        std=data["std"],
        device=device,
        resize=data.get("resize"),
    )
    logits, labels = predict_logits(model, loader)
    return ds, logits, labels


def test_probabilities(
    run_dir: str | os.PathLike, *, device: str = "cpu", data_dir: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, K), labels (N,)) of a trained run on its dataset's test set:
    what :func:`convzoo.explain.images.pick_shared_examples` picks from."""
    dev = resolve_device(device)
    _, ckpt, model = load_trained_run(run_dir, dev)
    _, logits, labels = _test_logits(model, ckpt["data"], dev, data_dir)
    return logits.float().softmax(dim=1).cpu(), labels.cpu()


def output_dir(out: str | os.PathLike | None, run_dir: Path) -> Path:
    """``out`` or ``RUN/explain``: a folder, never one of the run's own files."""
    out = Path(out) if out is not None else run_dir / "explain"
    refuse_overwrite(out, [run_dir], "--out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    return out


def explain_run(
    run_dir: str | os.PathLike,
    images: list[str] | None = None,
    *,
    layer: str | None = None,
    out: str | os.PathLike | None = None,
    topk: int = 3,
    device: str = "cpu",
    data_dir: str | None = None,
    right: int = 4,
    wrong: int = 4,
    test_indices: list[int] | None = None,
    command: str = "",
) -> Explained:
    """Explain the run in ``run_dir`` on ``images`` (files), or on test images of its
    dataset: those at ``test_indices`` when given (so that several runs can be shown on
    the same images), else ``right`` predicted right and the ``wrong`` most confident
    mistakes. Write the PNGs and ``explain.html`` into ``out`` (default ``RUN/explain``).

    ``layer`` is the module whose Grad-CAM is shown (default: the last convolutional
    stage, :func:`convzoo.explain.layers.default_layer`).
    """
    dev = resolve_device(device)
    run, ckpt, model = load_trained_run(run_dir, dev)
    out_dir = output_dir(out, run.path)
    data = ckpt["data"]
    classes = [str(c) for c in data["classes"]]
    size = tuple(int(s) for s in data["image_size"])
    channels = int(data["in_channels"])

    if images:
        pictures = load_images(images, channels, size)  # DataError: not an image, channels
        names, kinds, truths = list(images), ["given"] * len(images), [None] * len(images)
        indices = [None] * len(images)
        x = _batch(pictures, data, dev)
        probs = predict_logits(model, [(x, torch.zeros(len(x)))])[0].softmax(dim=1)
    else:
        ds, logits, labels = _test_logits(model, data, dev, data_dir)
        if test_indices is not None:
            n = len(labels)
            bad = [i for i in test_indices if not 0 <= int(i) < n]
            if bad or not test_indices:
                raise ConfigError(f"test image indices must lie in [0, {n}), got {bad or 'none'}")
            picked = [(int(i), "chosen") for i in test_indices]
        else:
            picked = pick_examples(logits.softmax(dim=1), labels, right, wrong)
        if not picked:
            raise ConfigError(f"the test set of {run.path} has no images to explain")
        idx = torch.tensor([i for i, _ in picked])
        pictures = ds.test_images[idx].cpu()
        names = [f"test image #{i}" for i, _ in picked]
        kinds = [k for _, k in picked]
        truths = [classes[int(labels[i])] for i, _ in picked]
        indices = [i for i, _ in picked]
        x = _batch(pictures, data, dev)
        probs = logits[idx].softmax(dim=1)

    layer_name = layer if layer is not None else default_layer(model, x[:1])
    module = find_layer(model, layer_name)  # ConfigError naming valid layers
    require_maps(model, module, layer_name, x[:1])
    cams = grad_cam(model, module, x, target=probs.argmax(dim=1).to(dev), size=size)

    scale = SCALE if max(size) <= 64 else 1
    result = Explained(
        run_dir=run.path,
        out_dir=out_dir,
        model=run.model,
        dataset=run.dataset,
        classes=classes,
        test_accuracy=run.result.get("test_accuracy"),
        layer=layer_name,
        layer_default=layer is None,
        command=command,
    )
    files: dict[str, bytes] = {}
    k = min(topk, len(classes))
    for i, (name, kind, truth, index) in enumerate(zip(names, kinds, truths, indices, strict=True)):
        rgb = figures.image_rgb(pictures[i].numpy())
        pair = figures.grid([rgb, figures.overlay(rgb, cams[i].numpy())], columns=2, scale=scale)
        file = f"cam-{i + 1:02d}.png"
        files[file] = figures.png(pair)
        p, c = probs[i].topk(k)
        top = [(classes[int(j)], float(q)) for q, j in zip(p, c, strict=True)]
        result.examples.append(Example(name, kind, truth, top, file, index))

    conv_name, conv = first_conv(model, x[:1])
    tiles = filter_tiles(conv.weight)
    result.filters_layer, result.filters_shape = conv_name, tuple(conv.weight.shape)
    result.filters_file = "filters.png"
    files["filters.png"] = figures.png(
        figures.grid(tiles, columns=16, scale=max(1, 48 // tiles[0].shape[0]))
    )

    result.feature_image = names[0]
    chosen = stages(model, x[:1])
    maps = feature_maps(model, x[:1], {b.name: b.module for b in chosen})
    for j, b in enumerate(chosen):
        if b.name not in maps:
            continue
        tiles = map_tiles(maps[b.name], FEATURE_CHANNELS)
        file = f"features-{j + 1:02d}.png"
        files[file] = figures.png(
            figures.grid(tiles, columns=8, scale=max(1, 64 // max(tiles[0].shape[:2])))
        )
        result.stages.append(Stage(b.name, b.shape, file, len(tiles)))

    from .page import render_page

    for file, data_bytes in files.items():
        refuse_overwrite(out_dir / file, [run.path], "--out")
        atomic_write_bytes(out_dir / file, data_bytes)
    write_json(out_dir / "explain.json", _summary(result))
    page = out_dir / "explain.html"
    refuse_overwrite(page, [run.path], "--out")
    atomic_write_text(page, render_page(result))
    result.page = page
    return result


def _summary(r: Explained) -> dict:
    return {
        "run": str(r.run_dir),
        "model": r.model,
        "dataset": r.dataset,
        "layer": r.layer,
        "examples": [
            {
                "image": e.name,
                "test_index": e.index,
                "kind": e.kind,
                "true_class": e.true_class,
                "top": [{"class": c, "probability": p} for c, p in e.top],
                "cam": e.cam_file,
            }
            for e in r.examples
        ],
        "filters": {"layer": r.filters_layer, "shape": list(r.filters_shape)},
        "stages": [{"name": s.name, "shape": list(s.shape), "file": s.file} for s in r.stages],
    }
