"""The optimizer and the loss: what one training step minimises, and with what.

Shared by the trainer and by ``convzoo bench train``, so that a timed step is the
step a run takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.googlenet import AUX_LOSS_WEIGHT


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: biases and normalisation parameters are not decayed.

    Departure from the papers, which decayed every parameter; this is the usual modern
    practice (e.g. Goyal et al. 2017) and matters little.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """SGD (with momentum, Nesterov when asked) or AdamW over :func:`param_groups`."""
    groups = param_groups(model, weight_decay)
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
