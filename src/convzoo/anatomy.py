"""Model anatomy: per-block output shapes, parameters and multiply-adds.

The general form of the per-block shape printout of d2l (Dive into Deep Learning,
Gluon edition), which printed each block's
output shape. A *block* is a direct child of the model, with plain ``nn.Sequential``
containers opened up one level at a time, so a ResNet shows one row per ``Residual``
and a DenseNet one row per ``DenseBlock`` and ``transition_block``. Multiply-adds
count convolutions and fully connected layers (the usual convention: batch norm,
activations and pooling are not counted), for one image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

# Layers that neither change the shape nor hold weights get no row of their own.
_QUIET = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Dropout, nn.Identity, nn.Softmax)


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass
class Summary:
    model: str
    input_size: tuple[int, ...]
    rows: list[Row] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0

    def __str__(self) -> str:
        header = ("block", "type", "output shape", "params", "mult-adds")
        lines = [
            (r.name, r.kind, "x".join(map(str, r.output_shape)), f"{r.params:,}", human(r.macs))
            for r in self.rows
        ]
        widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
        rule = "  ".join("-" * w for w in widths)

        def fmt(cells):
            left = [c.ljust(w) for c, w in zip(cells[:3], widths[:3], strict=True)]
            right = [c.rjust(w) for c, w in zip(cells[3:], widths[3:], strict=True)]
            return "  ".join(left + right).rstrip()

        out = [f"{self.model}, input {'x'.join(map(str, self.input_size))}", fmt(header), rule]
        out += [fmt(line) for line in lines]
        out += [
            rule,
            f"total params: {self.total_params:,} ({human(self.total_params)})",
            f"total mult-adds: {self.total_macs:,} ({human(self.total_macs)})",
        ]
        return "\n".join(out)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one convolution or linear layer for one sample."""
    per_sample = output[0].numel() if output.dim() > 1 else output.numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        k = 1
        for s in module.kernel_size:
            k *= s
        return per_sample * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


def blocks(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The rows of the summary: children, with plain Sequentials opened up."""
    out = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if type(child) in (nn.Sequential, nn.ModuleList) and len(child) > 0:
            out += blocks(child, full + ".")
        else:
            out.append((full, child))
    return out


def summary(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224)) -> Summary:
    """Per-block output shapes, parameters and multiply-adds of ``model``.

    ``input_size`` is (C, H, W) without the batch dimension. The model runs once, in
    evaluation mode, on a batch of one zero image; its mode is restored afterwards.
    Blocks that do not run in evaluation mode (GoogLeNet's auxiliary heads) have no
    row, but their parameters count in the totals.
    """
    input_size = tuple(int(s) for s in input_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    macs = [0]
    started: dict[int, int] = {}
    rows: list[Row] = []
    handles = []

    def count(mod, inputs, output):
        if isinstance(output, torch.Tensor):
            macs[0] += layer_macs(mod, output)

    for mod in model.modules():
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(mod.register_forward_hook(count))

    names: dict[int, str] = {}

    def pre(mod, inputs):
        started[id(mod)] = macs[0]

    def post(mod, inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        rows.append(
            Row(
                name=names[id(mod)],
                kind=type(mod).__name__,
                output_shape=tuple(out.shape[1:]),
                params=sum(p.numel() for p in mod.parameters()),
                macs=macs[0] - started.pop(id(mod)),
            )
        )

    for name, block in blocks(model):
        names[id(block)] = name
        handles.append(block.register_forward_pre_hook(pre))
        handles.append(block.register_forward_hook(post))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    kept, previous = [], (1, *input_size)[1:]
    for r in rows:
        quiet = (
            r.kind in {c.__name__ for c in _QUIET} and r.params == 0 and r.output_shape == previous
        )
        if not quiet:
            kept.append(r)
        previous = r.output_shape
    return Summary(
        model=getattr(model, "name", type(model).__name__),
        input_size=input_size,
        rows=kept,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=macs[0],
    )
