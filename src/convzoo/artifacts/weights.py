"""``model.safetensors``: one writer, one reader, one metadata schema."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .files import atomic_write_bytes

# The metadata of a convzoo safetensors file, stored as JSON under the key "convzoo",
# in this order: what get_model needs, and what inference needs around the model.
MODEL_META_KEYS = (
    "model_name",  # a registered model name
    "model_options",  # get_model keyword arguments: num_classes, in_channels, ...
    "classes",  # class names, in label order
    "mean",  # per-channel normalisation of pixel values in [0, 1]
    "std",
    "image_size",  # [H, W] of the stored images
    "resize",  # the side the images are resized to before the model, or null
    "in_channels",
    "dataset",
    "ema",  # whether the weights are an exponential moving average
)


def model_meta(**values: Any) -> dict:
    """The safetensors metadata dict, keys in :data:`MODEL_META_KEYS` order.

    ``model_name`` and ``model_options`` are required; the others default to None.
    """
    unknown = set(values) - set(MODEL_META_KEYS)
    if unknown:
        raise ValueError(f"unknown model metadata keys: {sorted(unknown)}")
    for key in ("model_name", "model_options"):
        if key not in values:
            raise ValueError(f"model metadata needs {key!r}")
    return {key: values.get(key) for key in MODEL_META_KEYS}


def write_model_safetensors(
    path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict
) -> Path:
    """Write a model's weights and its :func:`model_meta` to ``path``, atomically.

    Tensors are stored on the CPU and contiguous; tensors that share memory (tied
    weights) are stored once each, as copies (safetensors refuses shared storage).
    """
    meta = model_meta(**meta)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    seen: set[int] = set()
    for k, v in list(tensors.items()):
        ptr = v.data_ptr()
        if ptr in seen and v.numel():
            tensors[k] = v.clone()
        seen.add(ptr)
    from safetensors.torch import save

    data = save(tensors, metadata={"format": "pt", "convzoo": json.dumps(meta)})
    atomic_write_bytes(path, _sorted_metadata(data))
    return Path(path)


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its metadata keys in sorted order.

    safetensors writes its metadata map in an order that changes from one process to
    the next; sorting it makes the same weights give the same bytes (a deterministic run
    gives a file with the same hash every time). Keys and values keep their bytes, so
    the header keeps its length.
    """
    size = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + size]
    meta = json.loads(header).get("__metadata__") or {}

    def encoded(keys) -> bytes:
        obj = {k: meta[k] for k in keys}
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    written, wanted = encoded(meta), encoded(sorted(meta))
    if written == wanted or header.count(written) != 1:
        return data
    return data[:8] + header.replace(written, wanted) + data[8 + size :]


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(convzoo metadata, {tensor name: shape}) of a safetensors file, no tensor read.

    :class:`CheckpointError` when the file is missing, unreadable or has no convzoo
    model description.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            strings = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        meta = json.loads(strings["convzoo"])
    except (KeyError, TypeError, json.JSONDecodeError):
        meta = None
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("model_name"), str)
        or not isinstance(meta.get("model_options"), dict)
    ):
        raise CheckpointError(f"{path} has no convzoo model description in its metadata")
    return meta, shapes


def read_safetensors_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU (check its header first)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
