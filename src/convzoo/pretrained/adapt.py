"""Fitting pretrained tensors to a model that differs from the file's.

- Input channels: :func:`adapt_input_conv` is timm's ``adapt_input_conv``
  (``timm/models/_manipulate.py``). One channel: the RGB kernels are summed, so a gray
  image x gives what the RGB model gives on (x, x, x). C channels other than 1 and 3:
  the RGB kernels are repeated cyclically (R, G, B, R, ...) to C and scaled by 3 / C.
  When C is a multiple of 3, an image whose C channels are all x then gives exactly what
  the RGB model gives on (x, x, x); for other C the kernels of the last, incomplete
  cycle weigh in unevenly, so it is only close (timm's rule, kept as it is).
- The classifier: a different number of classes keeps the model's own fresh head.
- The small-input forms: every tensor whose shape fits is kept; the others keep the
  model's initialisation and are reported.
"""

from __future__ import annotations

import math

import torch


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's weight (O, I, kH, kW) for ``in_channels`` inputs (see the
    module's docstring); ``I`` is 3 (RGB), or a multiple of 3 when ``in_channels`` is 1."""
    dtype = weight.dtype
    w = weight.float()
    out, i, kh, kw = w.shape
    if in_channels == i:
        return weight
    if in_channels == 1:
        if i > 3 and i % 3 == 0:
            w = w.reshape(out, i // 3, 3, kh, kw).sum(dim=2)
        else:
            w = w.sum(dim=1, keepdim=True)
    else:
        if i != 3:
            raise ValueError(f"cannot adapt a {i}-channel convolution to {in_channels} channels")
        repeat = math.ceil(in_channels / 3)
        w = w.repeat(1, repeat, 1, 1)[:, :in_channels] * (3 / in_channels)
    return w.to(dtype)
