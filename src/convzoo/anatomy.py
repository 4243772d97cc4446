"""Model anatomy: per-block output shapes, parameters and multiply-adds.

The general form of the per-block shape printout of d2l (Dive into Deep Learning,
Gluon edition), which printed each block's
output shape. A *block* is a direct child of the model, with plain ``nn.Sequential``
containers opened up one level at a time, so a ResNet shows one row per ``Residual``
and a DenseNet one row per ``DenseBlock`` and ``transition_block``. Multiply-adds
count convolutions and fully connected layers (the usual convention: batch norm,
activations and pooling are not counted), for one image. The receptive field of a
block's output (how many input pixels, along the height, one output pixel sees) and its
jump (the product of the strides so far: how many input pixels apart two neighbouring
output pixels are) come from the layers themselves (:func:`receptive_fields`).

:func:`memory_estimate` and :func:`check_memory` are the one place that says how much
memory a model takes at a batch size, before anything is allocated: the model is built
and run on the meta device (shapes only).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .device import available_memory
from .errors import ConfigError
from .registry import get_model
from .units import gib, human

# Layers that neither change the shape nor hold weights get no row of their own.
_QUIET = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Dropout, nn.Identity, nn.Softmax)


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    receptive_field: int | None = None
    jump: int | None = None


@dataclass
class Summary:
    model: str
    input_size: tuple[int, ...]
    rows: list[Row] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0

    def __str__(self) -> str:
        header = ("block", "type", "output shape", "RF", "jump", "params", "mult-adds")
        lines = [
            (
                r.name,
                r.kind,
                "x".join(map(str, r.output_shape)),
                "-" if r.receptive_field is None else str(r.receptive_field),
                "-" if r.jump is None else str(r.jump),
                f"{r.params:,}",
                human(r.macs),
            )
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


def _first(v) -> int:
    return int(v if isinstance(v, int) else v[0])


class _Fields(torch.overrides.TorchFunctionMode):
    """Carries (receptive field, jump) from tensor to tensor through a forward.

    Every torch operation gives its outputs the largest field and jump of its inputs
    (a concatenation or a sum of branches sees what its widest branch sees); the
    forward hooks of :func:`receptive_fields` then set the outputs of convolutions and
    pooling layers by the usual rule: ``rf + (kernel - 1) * dilation * jump`` and
    ``jump * stride``. Tensors are known by id, checked with a weak reference, so
    nothing is kept alive.
    """

    def __init__(self) -> None:
        super().__init__()
        self.known: dict[int, tuple[weakref.ref, int, int]] = {}

    def get(self, t) -> tuple[int, int] | None:
        entry = self.known.get(id(t))
        return (entry[1], entry[2]) if entry is not None and entry[0]() is t else None

    def put(self, t: torch.Tensor, rf: int, jump: int) -> None:
        self.known[id(t)] = (weakref.ref(t), rf, jump)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        fields = [
            f for t in _tensors([*args, *(kwargs or {}).values()]) if (f := self.get(t)) is not None
        ]
        if fields:
            rf, jump = max(f[0] for f in fields), max(f[1] for f in fields)
            for t in _tensors(out):
                self.put(t, rf, jump)
        return out


def _spatial(module: nn.Module, n_in: int, n_out: int) -> tuple[int, int, int] | None:
    """(kernel, stride, dilation) along the height of a convolution or pooling layer."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        dilation = _first(getattr(module, "dilation", 1))
        stride = _first(module.stride) if module.stride is not None else _first(module.kernel_size)
        return _first(module.kernel_size), stride, dilation
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        # Output pixel i pools input rows floor(i n / m) to ceil((i + 1) n / m): the
        # widest bin and the step between bins, for the usual whole-number ratios.
        return -(-n_in // n_out), max(1, n_in // n_out), 1
    return None


def receptive_fields(
    model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224)
) -> dict[str, tuple[int, int]]:
    """(receptive field, jump) along the height of the output of every named module of
    ``model`` (the model itself as ""), from one forward of a zero image in
    evaluation mode (on the model's device: use the meta device for a free run).

    Exact for chains of convolutions and pooling; where branches meet (a concatenation,
    a residual sum) the largest field and jump of the branches. Adaptive pooling counts
    as a pool whose kernel is its widest bin, so a global average pool's field covers
    everything before it; a dense layer keeps its input's.
    """
    fields = _Fields()
    names = {id(m): name for name, m in model.named_modules()}
    out: dict[str, tuple[int, int]] = {}

    def post(mod, inputs, output):
        x = next(iter(_tensors(inputs)), None)
        y = next(iter(_tensors(output)), None)
        if x is None or y is None:
            return
        f = fields.get(x)
        if f is None:
            return
        if x.dim() == 4 and y.dim() == 4:
            spatial = _spatial(mod, x.shape[2], y.shape[2])
            if spatial is not None:
                k, stride, dilation = spatial
                f = (f[0] + (k - 1) * dilation * f[1], f[1] * stride)
                for t in _tensors(output):
                    fields.put(t, *f)
        g = fields.get(y)
        out[names[id(mod)]] = g if g is not None else f

    handles = [m.register_forward_hook(post) for m in model.modules()]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), fields:
            x = torch.zeros((1, *input_size), device=device)
            fields.put(x, 1, 1)
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return out


def summary(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224)) -> Summary:
    """Per-block output shapes, parameters and multiply-adds of ``model``.

    ``input_size`` is (C, H, W) without the batch dimension. The model runs once, in
    evaluation mode, on a batch of one zero image; its mode is restored afterwards.
    Blocks that do not run in evaluation mode (GoogLeNet's auxiliary heads) have no
    row, but their parameters count in the totals. Each row's ``receptive_field`` and
    ``jump`` are those of :func:`receptive_fields`.
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

    fields = receptive_fields(model, input_size)
    rows = [
        replace(r, receptive_field=fields[r.name][0], jump=fields[r.name][1])
        if r.name in fields
        else r
        for r in rows
    ]
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


# -- memory ----------------------------------------------------------------------------

# Bytes per image when the shapes overflow what a tensor can hold: 2**62 float32
# elements, more than any machine has; such an estimate always fails the check.
_OVERFLOW = 4 << 62


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _activations(model: nn.Module, input_size: tuple[int, int, int]):
    """(sum, largest, peak live) bytes of the tensors a forward of one image passes
    between modules, measured on a batch of two on the meta device, in evaluation mode
    (the same shapes, and much quicker on the meta device; GoogLeNet's auxiliary heads,
    which run only in training, are left out: a few percent of its activations).

    ``sum`` counts every distinct tensor that enters or leaves a module (an in-place
    ReLU's output is its input, counted once); ``peak`` follows which of them are still
    referenced, which is what an inference forward (no autograd) holds at once.
    """
    live, peak, total, largest = [0], [0], [0], [0]
    seen: dict[int, weakref.ref] = {}

    def release(n: int) -> None:
        live[0] -= n

    def track(value) -> None:
        for t in _tensors(value):
            if isinstance(t, nn.Parameter):
                continue
            ref = seen.get(id(t))
            if ref is not None and ref() is t:
                continue
            n = t.numel() * t.element_size()
            seen[id(t)] = weakref.ref(t)
            weakref.finalize(t, release, n)
            live[0] += n
            total[0] += n
            largest[0] = max(largest[0], n)
            peak[0] = max(peak[0], live[0])

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(lambda mod, inputs: track(inputs)))
        handles.append(m.register_forward_hook(lambda mod, inputs, out: track(out)))
    model.eval()
    try:
        with torch.no_grad():
            model(torch.empty((2, *input_size), device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total[0] // 2, largest[0] // 2, peak[0] // 2


def memory_terms(
    name: str, options: dict, input_size: tuple[int, ...], *, training: bool
) -> tuple[int, int]:
    """(bytes independent of the batch, bytes per image) of ``name`` built with
    ``options`` (as :func:`convzoo.get_model`) on images of ``input_size`` (C, H, W).

    Inference: the parameters, plus per image the largest set of activations alive at
    once during a forward. Training: the parameters four times (weights, gradients and
    two optimizer moments, as Adam or SGD with momentum and EMA keep), plus per image
    every activation of the forward (autograd keeps them for the backward) and twice
    the largest (the gradients flowing back through it). An estimate, not a promise:
    allocator slack and workspace buffers come on top.
    """
    size = tuple(input_size)
    if len(size) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in size):
        raise ConfigError(f"input size must be three positive integers (C, H, W), got {size!r}")
    with torch.device("meta"):
        model = get_model(name, **options)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    image = size[0] * size[1] * size[2] * 4
    if image > _OVERFLOW // 64:
        per_image = _OVERFLOW
    else:
        try:
            total, largest, peak = _activations(model, size)
        except (RuntimeError, OverflowError):  # shapes beyond what a tensor can hold
            per_image = _OVERFLOW
        else:
            per_image = total + 2 * largest if training else max(peak, image)
    return (4 * params if training else params), per_image


def memory_estimate(
    name: str,
    options: dict,
    input_size: tuple[int, ...],
    batch_size: int,
    *,
    training: bool,
) -> int:
    """Bytes that ``name`` (built with ``options``) needs for a batch of ``batch_size``
    images of ``input_size`` (C, H, W), for training or inference: see
    :func:`memory_terms`. Computed with Python integers: nothing overflows."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    fixed, per_image = memory_terms(name, options, input_size, training=training)
    return fixed + batch_size * per_image


def check_memory(
    name: str,
    options: dict,
    input_size: tuple[int, ...],
    batch_size: int,
    *,
    training: bool,
    what: str | None = None,
    limit: int | None = None,
    fix: str = "lower --batch, --width or --input",
) -> int:
    """The :func:`memory_estimate`, or :class:`ConfigError` when it exceeds ``limit``
    bytes (default: the memory available now, ``MemAvailable`` of /proc/meminfo; pass
    the GPU's memory for a GPU run). The message gives both numbers, the largest batch
    that fits, and ``fix``: the options that lower the need; ``what`` (e.g. "bench
    throughput") starts it when given."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    fixed, per_image = memory_terms(name, options, input_size, training=training)
    need = fixed + batch_size * per_image
    free = available_memory() if limit is None else int(limit)
    if need <= free:
        return need
    fits = (free - fixed) // per_image if free > fixed else 0
    room = f"at most {fits:,} images per batch fit" if fits >= 1 else "not even one image fits"
    shape = "x".join(map(str, input_size))
    mode = "training" if training else "inference"
    lead = f"{what}: " if what else ""
    raise ConfigError(
        f"{lead}{name} ({mode}) at batch {batch_size:,} of {shape} images needs about "
        f"{gib(need)} of memory, {gib(free)} is available ({room}); {fix}"
    )
