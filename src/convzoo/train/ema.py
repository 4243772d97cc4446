"""Exponential moving average of a model's weights (Polyak & Juditsky 1992).

The average is a second copy of the model, updated after every optimizer step with
``ema = decay * ema + (1 - decay) * weights``. Floating-point buffers (batch-norm
running statistics) are averaged the same way; integer buffers are copied. As in
TensorFlow's ExponentialMovingAverage with ``num_updates``, the decay is warmed up,
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that short runs are not
dominated by the random initial weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A moving average of ``model``'s parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._float_src: list[torch.Tensor] = []
        self._float_dst: list[torch.Tensor] = []
        self._other: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._model_ref: int | None = None

    def _collect(self, model: nn.Module) -> None:
        src = model.state_dict(keep_vars=True)
        dst = self.module.state_dict(keep_vars=True)
        self._float_src, self._float_dst, self._other = [], [], []
        for k, v in dst.items():
            s = src[k]
            if v.is_floating_point():
                self._float_src.append(s.detach())
                self._float_dst.append(v.detach())
            else:
                self._other.append((s.detach(), v.detach()))
        self._model_ref = id(model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        if self._model_ref != id(model):
            self._collect(model)
        self.updates += 1
        n = self.updates
        decay = min(self.decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(self._float_dst, self._float_src, 1.0 - decay)
        for s, d in self._other:
            d.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["model"])
