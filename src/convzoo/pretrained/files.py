"""Finding, checking and reading a file of pretrained weights.

- torchvision's files carry the first hex digits of their SHA-256 in their name
  (``resnet18-f37072fd.pth``); :func:`check_hash_prefix` verifies it as ``torch.hub``
  does, and refuses a file whose bytes do not match.
- ``torchvision`` as a source means the standard file of the model in torch.hub's cache,
  ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints`` by default).
  Nothing is downloaded: when the file is not there, the error names it and its URL.
- :func:`read_weights` reads a ``.pth`` (``torch.load(weights_only=True)``, so a pickle
  that names code is refused unread), a ``.safetensors`` file, a convzoo run directory
  or checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts import (
    MODEL_FILE,
    find_checkpoint,
    load_torch_file,
    read_safetensors_header,
    read_safetensors_tensors,
)
from ..errors import CheckpointError

URL_BASE = "https://download.pytorch.org/models/"
# The standard torchvision file of each model, newest (torchvision's DEFAULT) first.
TORCHVISION_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth",),
    "resnet34": ("resnet34-b627a593.pth",),
    "resnet50": ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
    "resnet101": ("resnet101-cd907fc2.pth", "resnet101-63fe2227.pth"),
    "resnet152": ("resnet152-f82ba261.pth", "resnet152-394f9c45.pth"),
    "vgg11": ("vgg11-8a719046.pth",),
    "vgg13": ("vgg13-19584684.pth",),
    "vgg16": ("vgg16-397923af.pth",),
    "vgg19": ("vgg19-dcbb9e9d.pth",),
    "vgg11_bn": ("vgg11_bn-6002323d.pth",),
    "vgg13_bn": ("vgg13_bn-abd245e5.pth",),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth",),
    "vgg19_bn": ("vgg19_bn-c79401a0.pth",),
    "densenet121": ("densenet121-a639ec97.pth",),
    "densenet161": ("densenet161-8d451a50.pth",),
    "densenet169": ("densenet169-b2777c0a.pth",),
    "densenet201": ("densenet201-c1103571.pth",),
}
# torch.hub's rule: the hex digits between the first "-" and the next "."; convzoo asks
# for at least 6 of them, so that a name such as "run-1.pth" is not read as a hash.
HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")
# What the image of a torchvision ImageNet model expects (torchvision's transforms).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224


def hub_dir() -> Path:
    """torch.hub's checkpoint folder: ``$TORCH_HOME/hub/checkpoints``, where TORCH_HOME
    defaults to ``$XDG_CACHE_HOME/torch`` (``~/.cache/torch``)."""
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.environ.get("TORCH_HOME", os.path.join(cache, "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def torchvision_file(name: str) -> Path:
    """The standard torchvision file of model ``name`` in :func:`hub_dir`;
    :class:`CheckpointError` naming the file and its URL when it is not there."""
    files = TORCHVISION_FILES.get(name)
    if not files:
        known = ", ".join(sorted(TORCHVISION_FILES))
        raise CheckpointError(
            f"torchvision publishes no weights convzoo reads for {name} ({known})"
        )
    folder = hub_dir()
    for file in files:
        if (folder / file).is_file():
            return folder / file
    raise CheckpointError(
        f"{files[0]} is not in {folder}; download {URL_BASE}{files[0]} into that folder "
        "(or give its path to --pretrained)"
    )


def check_hash_prefix(path: Path) -> None:
    """When ``path``'s name carries a hash prefix (``-f37072fd.``), the file's SHA-256
    must start with it (``torch.hub``'s check); :class:`CheckpointError` otherwise."""
    m = HASH_PREFIX.search(path.name)
    if m is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(m[1]):
        raise CheckpointError(
            f"{path}: its SHA-256 starts with {digest.hexdigest()[: len(m[1])]}, its name "
            f"says {m[1]}; the file is damaged or not the one named (download it again)"
        )


@dataclass
class WeightsFile:
    """Tensors read from a file, and what is known of where they come from."""

    path: Path
    weights: dict[str, torch.Tensor]
    meta: dict | None  # a convzoo file's metadata (model_name, model_options, classes, ...)

    @property
    def is_convzoo(self) -> bool:
        return self.meta is not None


def _state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside what a .pth holds: itself, or timm's and others' wrappers."""
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return dict(inner)
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
    raise CheckpointError(f"{path} holds no state dict of tensors")


def _read_safetensors(path: Path) -> WeightsFile:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            has_meta = "convzoo" in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    meta = read_safetensors_header(path)[0] if has_meta else None
    return WeightsFile(path, read_safetensors_tensors(path), meta)


def read_weights(spec: str | os.PathLike, model_name: str) -> WeightsFile:
    """The weights meant by ``spec``: ``"torchvision"`` (the standard file in the torch
    hub cache), a run directory, a convzoo checkpoint, a ``.safetensors`` or a ``.pth``."""
    if str(spec) == "torchvision":
        path = torchvision_file(model_name)
    else:
        path = Path(spec).expanduser()
    if path.is_dir():
        model_file = path / MODEL_FILE
        path = model_file if model_file.is_file() else find_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"no such file: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    check_hash_prefix(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = load_torch_file(path)
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("convzoo-checkpoint"):
        weights = obj.get("ema") if obj.get("ema") is not None else obj.get("model")
        if not isinstance(weights, dict):
            raise CheckpointError(f"{path} is a convzoo checkpoint without weights")
        meta = {"model_name": obj.get("model_name"), "model_options": obj.get("model_options"),
                "classes": (obj.get("data") or {}).get("classes")}  # fmt: skip
        return WeightsFile(path, dict(weights), meta)
    return WeightsFile(path, _state_dict(obj, path), None)
