"""The optimizer and the loss: what one training step minimises, and with what.

Shared by the trainer and by ``convzoo bench train``, so that a timed step is the
step a run takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.googlenet import AUX_LOSS_WEIGHT


def classifier_prefix(model: nn.Module) -> str:
    """The name (with a trailing dot) of ``model``'s classifier: its last dense layer, or
    its last convolution when it has none (NiN); everything before it is the backbone."""
    last = ""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if not last:
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                last = name
    return last + "."


def param_groups(
    model: nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0
) -> list[dict]:
    """Weight decay on weights only: biases and normalisation parameters are not decayed.

    Departure from the papers, which decayed every parameter; this is the usual modern
    practice (e.g. Goyal et al. 2017) and matters little.

    ``backbone_lr_scale`` below 1 splits each group in two: the classifier
    (:func:`classifier_prefix`) at the full learning rate, the backbone at that fraction
    of it (each group's ``lr_scale``), the usual way to fine-tune pretrained weights.
    """
    head = classifier_prefix(model) if backbone_lr_scale != 1.0 else None
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            in_head = head is not None and name.startswith(head)
            groups.setdefault((p.ndim > 1, in_head), []).append(p)
    out = []
    for in_head in (False, True):
        for decayed in (True, False):
            params = groups.get((decayed, in_head), [])
            if not params and (in_head or head is not None):
                continue
            scale = 1.0 if in_head or head is None else backbone_lr_scale
            out.append({"params": params, "weight_decay": weight_decay if decayed else 0.0,
                        "lr_scale": scale})  # fmt: skip
    return out


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    backbone_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD (with momentum, Nesterov when asked) or AdamW over :func:`param_groups`; a
    step's learning rate is ``lr`` times each group's ``lr_scale``."""
    groups = param_groups(model, weight_decay, backbone_lr_scale)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


def training_loss(output, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy of the logits, plus :data:`AUX_LOSS_WEIGHT` times that of each
    auxiliary head (GoogLeNet, Szegedy et al. 2015).

    ``target`` is class indices (N,) or soft targets (N, K) from mixup/cutmix.
    """
    if isinstance(output, (tuple, list)):
        main, *aux = output
        loss = F.cross_entropy(main.float(), target, label_smoothing=label_smoothing)
        for a in aux:
            loss = loss + AUX_LOSS_WEIGHT * F.cross_entropy(
                a.float(), target, label_smoothing=label_smoothing
            )
        return loss
    return F.cross_entropy(output.float(), target, label_smoothing=label_smoothing)
