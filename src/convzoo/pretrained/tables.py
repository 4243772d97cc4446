"""Name tables: convzoo's tensor names <-> torchvision's and timm's, per family.

Each family is a list of rules (a regular expression over a convzoo name and the
template of the other library's name), applied to names, never to the order of the
tensors. The faithful forms of ResNet, VGG and DenseNet compute the same functions as
torchvision's ``resnet*``, ``vgg*`` and ``densenet*`` (same tensors, same shapes); timm's
ResNet and DenseNet use torchvision's names, and timm's VGG turns the first two dense
layers into convolutions (``pre_logits.fc1`` is 512x7x7 -> 4096, ``fc2`` 1x1), which
hold the same numbers in another shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import CheckpointError

SOURCES = ("torchvision", "timm")

Rule = tuple[str, str | Callable[[re.Match, nn.Module], str]]

# -- ResNet: the stem and the head have other names; the blocks keep theirs.
_RESNET: list[Rule] = [
    (r"stem\.0\.(.+)", r"conv1.\1"),
    (r"stem\.1\.(.+)", r"bn1.\1"),
    (r"(layer\d\.\d+)\.shortcut\.(\d)\.(.+)", r"\1.downsample.\2.\3"),
    (r"(layer\d\.\d+\.(?:conv|bn)\d\..+)", r"\1"),
    (r"head\.2\.(.+)", r"fc.\1"),
]


# -- VGG: torchvision's ``features`` is convzoo's blocks laid end to end (the same layers
# in the same order: conv, [bn], ReLU, ..., max pool), so block b's layer i is
# features.(layers in blocks 0..b-1 + i). The classifier loses convzoo's Flatten (index 0).
def _vgg_feature(m: re.Match, model: nn.Module) -> str:
    block, layer = int(m[1]), int(m[2])
    offset = sum(len(model.features[b]) for b in range(block))
    return f"features.{offset + layer}.{m[3]}"


_VGG: list[Rule] = [
    (r"features\.(\d+)\.(\d+)\.(.+)", _vgg_feature),
    (r"classifier\.1\.(.+)", r"classifier.0.\1"),
    (r"classifier\.4\.(.+)", r"classifier.3.\1"),
    (r"classifier\.7\.(.+)", r"classifier.6.\1"),
]
_VGG_TIMM_HEAD = {"classifier.0.": "pre_logits.fc1.", "classifier.3.": "pre_logits.fc2.",
                  "classifier.6.": "head.fc."}  # fmt: skip


# -- DenseNet: convzoo's ``blocks`` alternates dense blocks (even index) and transitions
# (odd index); a bottleneck layer is two (BN, ReLU, conv) Sequentials.
def _dense_layer(m: re.Match, model: nn.Module) -> str:
    block, layer, half, part = int(m[1]), int(m[2]), int(m[3]), int(m[4])
    name = {0: "norm", 2: "conv"}[part] + str(half + 1)
    return f"features.denseblock{block // 2 + 1}.denselayer{layer + 1}.{name}.{m[5]}"


def _transition(m: re.Match, model: nn.Module) -> str:
    name = {0: "norm", 2: "conv"}[int(m[2])]
    return f"features.transition{int(m[1]) // 2 + 1}.{name}.{m[3]}"


_DENSENET: list[Rule] = [
    (r"stem\.0\.(.+)", r"features.conv0.\1"),
    (r"stem\.1\.(.+)", r"features.norm0.\1"),
    (r"blocks\.(\d*[02468])\.net\.(\d+)\.([01])\.([02])\.(.+)", _dense_layer),
    (r"blocks\.(\d*[13579])\.([02])\.(.+)", _transition),
    (r"head\.0\.(.+)", r"features.norm5.\1"),
    (r"head\.4\.(.+)", r"classifier.\1"),
]
# torchvision's own DenseNet files predate its module names: "denselayer1.norm.1.weight"
# for "denselayer1.norm1.weight". torchvision and timm rename them on load; so does this.
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@dataclass(frozen=True)
class Family:
    """What convzoo knows of a family's weights in torchvision and timm."""

    rules: list[Rule]
    first_conv: str  # convzoo name of the first convolution's weight
    head: str  # convzoo prefix of the classifier (a fresh one when the classes differ)
    # Source prefixes of the faithful stem's layers that a small-input form may lack.
    stem_sources: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    "resnet": Family(_RESNET, "stem.0.weight", "head.2.", ("conv1.", "bn1.")),
    "vgg": Family(_VGG, "features.0.0.weight", "classifier.7."),
    "densenet": Family(
        _DENSENET, "stem.0.weight", "head.4.", ("features.conv0.", "features.norm0.")
    ),
}

# Families whose torchvision/timm weights convzoo refuses, and why.
REFUSED = {
    "googlenet": (
        "torchvision's GoogLeNet is not the paper's: it has batch norm after every "
        "convolution and a 3x3 convolution where the paper's inception branch has 5x5, "
        "so its weights compute another network"
    ),
    "alexnet": (
        "torchvision's AlexNet is the 64-192-384-256-256 'one weird trick' variant, not "
        "the paper's 96-256-384-384-256 plan that convzoo builds"
    ),
    "nin": "neither torchvision nor timm publishes Network in Network weights",
}


def family_of(name: str) -> str | None:
    """'resnet18' -> 'resnet', 'vgg11_bn' -> 'vgg'; None for other names."""
    for fam in (*FAMILIES, *REFUSED):
        if name.startswith(fam):
            return fam
    return None


def family(name: str) -> Family:
    """The :class:`Family` of model ``name``; :class:`CheckpointError` for the refused."""
    fam = family_of(name)
    if fam in FAMILIES:
        return FAMILIES[fam]
    reason = REFUSED.get(fam or "", "convzoo has no name table for it")
    raise CheckpointError(
        f"cannot load torchvision or timm weights into {name}: {reason}; "
        "convzoo files (a run directory or its model.safetensors) load into any model"
    )


def source_name(key: str, name: str, model: nn.Module, source: str) -> str:
    """The name in ``source`` ("torchvision" or "timm") of convzoo's tensor ``key`` of
    ``model`` (the registered model ``name``)."""
    for pattern, template in family(name).rules:
        m = re.fullmatch(pattern, key)
        if m is None:
            continue
        out = template(m, model) if callable(template) else m.expand(template)
        if source == "timm" and family_of(name) == "vgg":
            for tv, tm in _VGG_TIMM_HEAD.items():
                if out.startswith(tv):
                    out = tm + out[len(tv) :]
        return out
    raise CheckpointError(f"{name}: no {source} name for its tensor {key}")


def table(name: str, model: nn.Module, source: str) -> dict[str, str]:
    """{convzoo name: ``source`` name} for every tensor of ``model``."""
    if source not in SOURCES:
        raise CheckpointError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    return {k: source_name(k, name, model, source) for k in model.state_dict()}


def normalise_source_names(weights: dict) -> dict:
    """``weights`` with torchvision's legacy DenseNet names made current."""
    out = {}
    for k, v in weights.items():
        m = _DENSENET_LEGACY.match(k)
        out[m[1] + m[2] if m else k] = v
    return out
