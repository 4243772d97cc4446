"""Loading pretrained weights into a convzoo model, and converting them back.

:func:`load_pretrained` reads a file (:func:`~.files.read_weights`), maps its names
through the family's table (:mod:`.tables`), checks every shape, and loads what fits:
missing and unexpected tensors are named together in one error. A different number of
classes gets a fresh head, other input channels an adapted first convolution
(:mod:`.adapt`), and a small-input form keeps every tensor whose shape fits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .adapt import adapt_input_conv
from .files import TORCHVISION_FILES, WeightsFile, read_weights
from .tables import SOURCES, family, normalise_source_names, table

# timm's VGG holds the first two dense layers as convolutions: same numbers, other shape.
_RESHAPED = ("pre_logits.fc1.weight", "pre_logits.fc2.weight")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did."""

    path: Path
    source: str  # "convzoo", "torchvision" or "timm"
    loaded: int = 0  # tensors loaded
    fresh_head: bool = False
    adapted_input: str | None = None
    reinitialised: list[str] = field(default_factory=list)  # convzoo tensor names
    unused: list[str] = field(default_factory=list)  # the file's tensor names

    def line(self) -> str:
        """One line for the user."""
        parts = [f"{self.loaded} tensors from {self.path} ({self.source} names)"]
        if self.fresh_head:
            parts.append("a fresh classifier for the new classes")
        if self.adapted_input:
            parts.append(self.adapted_input)
        if self.reinitialised:
            layers = sorted({k.rsplit(".", 1)[0] for k in self.reinitialised})
            parts.append(f"re-initialised {', '.join(layers)} (their shapes differ)")
        if self.unused:
            layers = sorted({k.rsplit(".", 1)[0] for k in self.unused})
            parts.append(f"unused {', '.join(layers)}")
        return "pretrained: " + "; ".join(parts)


def _some(keys: list[str]) -> str:
    return keys[0] + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")


def _other_model(path: Path, name: str) -> str:
    for other, files in TORCHVISION_FILES.items():
        if other != name and path.name in files:
            return f"; it is torchvision's {other}"
    return "; is it a file of another model?"


def _choose_source(wf: WeightsFile, name: str, model: nn.Module, source: str | None):
    """(source, {convzoo name: file name}): the given source, or the one whose names
    the file holds most of."""
    if wf.is_convzoo:
        if source not in (None, "convzoo"):
            raise CheckpointError(f"{wf.path} is a convzoo file, not a {source} one")
        other = wf.meta.get("model_name")
        if isinstance(other, str) and other != name:
            raise CheckpointError(f"{wf.path} holds weights of {other}, not {name}")
        return "convzoo", {k: k for k in model.state_dict()}
    if source == "convzoo":
        raise CheckpointError(f"{wf.path} is not a convzoo file (no convzoo metadata)")
    candidates = [source] if source else list(SOURCES)
    tables = {s: table(name, model, s) for s in candidates}
    best = max(candidates, key=lambda s: len(set(tables[s].values()) & set(wf.weights)))
    return best, tables[best]


def load_pretrained(
    model: nn.Module,
    name: str,
    spec: str | os.PathLike,
    *,
    source: str | None = None,
    classes: list[str] | None = None,
) -> LoadReport:
    """Load the weights meant by ``spec`` into ``model`` (the registered model ``name``).

    ``spec``: a torchvision ``.pth``, a timm ``.pth`` or ``.safetensors``, a convzoo run
    directory, checkpoint or safetensors file, or ``"torchvision"`` (the standard file in
    the torch hub cache). ``source`` ("torchvision", "timm" or "convzoo") names the
    file's naming when known; by default it is read from the names. ``classes``: the
    class names the model will learn; a convzoo file trained on other classes then
    gives a fresh head even when the counts agree. Raises :class:`CheckpointError`.
    """
    wf = read_weights(spec, name)
    if not wf.is_convzoo:
        family(name)  # refuses the families convzoo has no table for, with the reason
        wf.weights = normalise_source_names(wf.weights)
    src, mapping = _choose_source(wf, name, model, source)
    report = LoadReport(wf.path, src)
    small = bool(getattr(model, "small_input", False))
    fam = family(name) if src != "convzoo" else None
    head = fam.head if fam else _head_prefix(model)
    first_conv = fam.first_conv if fam else _first_conv(model)

    # Files older than batch norm's step counter lack it: the model's own count stays.
    missing = [k for k, s in mapping.items()
               if s not in wf.weights and not k.endswith("num_batches_tracked")]  # fmt: skip
    used = set(mapping.values())
    unexpected = [k for k in wf.weights if k not in used]
    if small:  # the faithful stem's layers a small-input stem lacks are only unused
        stem = fam.stem_sources if fam else ()
        report.unused = [k for k in unexpected if k.startswith(stem)] if stem else []
        unexpected = [k for k in unexpected if k not in report.unused]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {mapping[missing[0]]}" + _some(missing)[len(missing[0]) :])
        if unexpected:
            detail.append(f"unexpected {_some(unexpected)}")
        raise CheckpointError(
            f"the weights in {wf.path} do not fit {name}: {'; '.join(detail)}"
            + _other_model(wf.path, name)
        )

    file_classes = (wf.meta or {}).get("classes")
    other_classes = bool(classes and file_classes and list(classes) != list(file_classes))
    own = model.state_dict()
    new, wrong = {}, []
    for key, target in own.items():
        tensor = wf.weights.get(mapping[key])
        if tensor is None:  # a step counter the file lacks
            continue
        if mapping[key] in _RESHAPED and tensor.numel() == target.numel():
            tensor = tensor.reshape(target.shape)
        if key == first_conv and tensor.dim() == 4 and tensor.shape[1] != target.shape[1]:
            try:
                tensor = adapt_input_conv(tensor, target.shape[1])
            except ValueError as exc:
                raise CheckpointError(f"{wf.path}: {exc}") from None
            how = "summed" if target.shape[1] == 1 else "repeated and scaled"
            report.adapted_input = (
                f"first convolution's RGB kernels {how} for {target.shape[1]} input channels"
            )
        if key.startswith(head) and (tensor.shape != target.shape or other_classes):
            report.fresh_head = True
            continue
        if tensor.shape != target.shape:
            if small:
                report.reinitialised.append(key)
                continue
            wrong.append((key, tuple(tensor.shape), tuple(target.shape)))
            continue
        new[key] = tensor.to(target.dtype)
    if wrong:
        key, have, want = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"the weights in {wf.path} do not fit {name}: {mapping[key]} has shape {have}, "
            f"the model's {key} wants {want}{more}; is the model's width or form different?"
        )
    with torch.no_grad():
        for key, tensor in new.items():
            own[key].copy_(tensor)
    report.loaded = len(new)
    return report


def _head_prefix(model: nn.Module) -> str:
    """The prefix of ``model``'s last dense (or 1x1 convolution) layer: its classifier."""
    last = ""
    for module_name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = module_name
    return last + "."


def _first_conv(model: nn.Module) -> str:
    for module_name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return module_name + ".weight"
    return ""


def to_source(model: nn.Module, name: str, source: str = "torchvision") -> dict[str, torch.Tensor]:
    """``model``'s state dict under ``source``'s names (a faithful form loads into the
    other library's model of the same name)."""
    mapping = table(name, model, source)
    out = {}
    for key, tensor in model.state_dict().items():
        s = mapping[key]
        t = tensor.detach().cpu().clone()
        if s in _RESHAPED:
            t = (
                t.reshape(*t.shape, 1, 1)
                if s.endswith("fc2.weight")
                else t.reshape(t.shape[0], -1, 7, 7)
            )
        out[s] = t
    return out


def source_num_classes(spec: str | os.PathLike, name: str, model: nn.Module) -> int:
    """The number of classes of the classifier in the file ``spec`` (for ``model``, the
    registered model ``name``, built with any number of classes, e.g. on the meta device)."""
    wf = read_weights(spec, name)
    if wf.is_convzoo:
        options = wf.meta.get("model_options") or {}
        if isinstance(options.get("num_classes"), int):
            return options["num_classes"]
        weights, mapping = wf.weights, {k: k for k in model.state_dict()}
    else:
        weights = normalise_source_names(wf.weights)
        _, mapping = _choose_source(WeightsFile(wf.path, weights, None), name, model, None)
    head = family(name).head if not wf.is_convzoo else _head_prefix(model)
    key = next(k for k in mapping if k.startswith(head) and k.endswith("weight"))
    tensor = weights.get(mapping[key])
    if tensor is None:
        raise CheckpointError(f"{wf.path} has no classifier {mapping[key]} for {name}")
    return int(tensor.shape[0])
