"""Grad-CAM (Selvaraju et al., 2017, "Grad-CAM: Visual Explanations from Deep Networks
via Gradient-based Localization"): where a trained network looks when it decides.

For a class c and the feature maps A^k of a chosen layer, each map is weighted by the
mean over its positions of d y^c / d A^k, the weighted maps are summed and passed
through a ReLU; the result is upsampled (bilinear) to the image's size.

The attribution is captum's ``LayerGradCam`` (captum 0.9 checked; the PyTorch team's
interpretability library). It installs beside the CPU build of torch without pulling
another torch or torchvision, it is maintained and tested against new torch releases,
and it already handles layers whose output is a tuple and models with several outputs.
Writing the same with hooks is a few lines, but captum's implementation is the one
users compare against. Departure from the paper: none in the map itself; it is
computed on the layer's output in eval mode (batch norm on running statistics,
GoogLeNet's auxiliary heads off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConvzooError

__all__ = ["grad_cam"]


def _logits(model: nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out[0] if isinstance(out, (tuple, list)) else out  # (N, K)

    return forward


def grad_cam(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Grad-CAM maps (N, H, W), float32, non-negative, on the CPU.

    ``x`` is the normalised batch (N, C, h, w) as the model takes it; ``target`` the
    class of each image (default: the predicted one); ``size`` the (H, W) the maps are
    upsampled to (default: the input's own h, w). The model's and its modules' modes
    are restored afterwards.
    """
    try:
        from captum.attr import LayerGradCam
    except ImportError:  # pragma: no cover - an optional dependency
        raise ConvzooError(
            "convzoo explain needs captum: pip install 'convzoo[explain]' (or pip install captum)"
        ) from None
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    # In-place ReLUs would overwrite the layer's output after captum has taken it;
    # switch them off for the pass (the values are the same).
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in inplace:
        m.inplace = False
    try:
        forward = _logits(model)
        x = x.detach().clone().requires_grad_(True)
        if target is None:
            with torch.no_grad():
                target = forward(x).argmax(dim=1)
        cam = LayerGradCam(forward, layer).attribute(
            x, target=target.to(x.device), relu_attributions=True
        )  # (N, 1, h', w') at the layer's resolution
    finally:
        for m in inplace:
            m.inplace = True
        for m, training in modes:
            m.training = training
    if isinstance(cam, tuple):
        cam = cam[0]
    cam = cam.detach().float().sum(dim=1, keepdim=True)  # one map per image
    size = tuple(size) if size is not None else tuple(x.shape[-2:])
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return cam.clamp_min(0).squeeze(1).cpu()  # (N, H, W); bilinear keeps it >= 0 anyway
