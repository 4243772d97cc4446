"""Throughput benchmarks: inference per backend, and the training step.

:func:`bench_throughput` times eager NCHW inference, convzoo's "fast" backend,
onnxruntime and the approximate "bf16" and "int8" backends on random input (median
latency per batch over repeated timed runs after a warm-up), gives the speed-up over
eager and says which precision paths the CPU runs natively
(:func:`convzoo.lowp.cpu_precisions`). The int8 backend is calibrated on a separate
random batch here: with random weights and inputs its figures are of speed only. :func:`bench_train` times a training step
(forward, backward, optimizer step) as ``convzoo train`` takes it
(:func:`convzoo.train.optim.build_optimizer` and :func:`~convzoo.train.optim.training_loss`),
in eager NCHW float32 and with convzoo's default training settings. Both return plain
dicts whose rows give ``images_per_second``; ``convzoo bench`` and
``benchmarks/throughput.py`` print them with :func:`format_throughput` and
:func:`format_train`.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Any

from .device import available_cores
from .errors import ConfigError

BACKEND_CHOICES = ("eager", "fast", "onnxruntime", "bf16", "int8", "all")
ALL_BACKENDS = ("eager", "fast", "onnxruntime", "bf16", "int8")
APPROXIMATE = ("bf16", "int8")
BACKEND_LABELS = {
    "eager": "eager NCHW",
    "fast": "fast",
    "fast+compile": "fast + torch.compile",
    "onnxruntime": "onnxruntime",
    "bf16": "bf16",
    "int8": "int8 (onnxruntime)",
}
TRAIN_VARIANTS = ("default", "all")
DEFAULT_BATCH = 64


@contextlib.contextmanager
def torch_threads(n: int):
    """``torch.set_num_threads(n)`` for the block, the previous count restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build(name: str, *, input_size, small_input: bool, width: float, num_classes: int):
    from .registry import get_model

    model = get_model(
        name,
        num_classes=num_classes,
        in_channels=input_size[0],
        small_input=small_input,
        width=width,
    )
    model.name = name
    return model


def _check_fits(name, *, input_size, batch, small_input, width, num_classes, training) -> None:
    """:class:`ConfigError` before anything is built when a batch would not fit in the
    memory available (:func:`convzoo.anatomy.check_memory`; the backends compared keep a
    few copies of the weights, which the estimate's margin covers)."""
    from .anatomy import check_memory

    options = {"num_classes": num_classes, "in_channels": input_size[0],
               "small_input": small_input, "width": width}  # fmt: skip
    what = "bench train" if training else "bench throughput"
    check_memory(name, options, tuple(input_size), batch, training=training, what=what,
                 fix="lower --batch, --width or --input")  # fmt: skip


def _prepare(name, *, input_size, batch, small_input, width, num_classes, threads, repeats,
             warmup, training):  # fmt: skip
    """(model in train or eval mode, threads): the options checked, the memory a batch
    needs checked before anything is built, the input size checked against the model."""
    from .models import check_input_size

    check_options(input_size=input_size, batch=batch, width=width, num_classes=num_classes,
                  threads=threads, repeats=repeats, warmup=warmup)  # fmt: skip
    _check_fits(name, input_size=input_size, batch=batch, small_input=small_input, width=width,
                num_classes=num_classes, training=training)  # fmt: skip
    model = _build(
        name, input_size=input_size, small_input=small_input, width=width, num_classes=num_classes
    ).train(training)
    check_input_size(model, input_size, flag="--input")
    return model, threads or available_cores()


def check_options(
    *, input_size, batch: int, width: float, num_classes: int, threads, repeats: int, warmup: int
) -> None:
    """:class:`ConfigError` naming the flag of the first option that cannot be used."""
    from .train.options import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT

    checks = [
        ("--batch", batch, POSITIVE_INT),
        ("--width", width, POSITIVE),
        ("--num-classes", num_classes, POSITIVE_INT),
        ("--repeats", repeats, POSITIVE_INT),
        ("--warmup", warmup, NON_NEGATIVE_INT),
    ]
    if threads is not None:
        checks.append(("--threads", threads, POSITIVE_INT))
    checks += [("--input", s, POSITIVE_INT) for s in input_size]
    for flag, value, rule in checks:
        problem = rule.problem(value)
        if problem:
            raise ConfigError(f"{flag} {problem}")


def _describe(name, input_size, batch, small_input, width, num_classes, threads) -> dict:
    return {
        "model": name,
        "small_input": small_input,
        "width": width,
        "num_classes": num_classes,
        "input_size": list(input_size),
        "batch": batch,
        "threads": threads,
    }


def bench_throughput(
    name: str,
    *,
    input_size: tuple[int, int, int] = (3, 224, 224),
    batch: int = DEFAULT_BATCH,
    backends: tuple[str, ...] = ALL_BACKENDS,
    small_input: bool = False,
    width: float = 1.0,
    num_classes: int = 1000,
    threads: int | None = None,
    repeats: int = 5,
    warmup: int = 2,
    compile: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Inference throughput of ``name`` with each of ``backends`` on one random batch.

    Each row: backend, label, images_per_second, latency_ms (median per batch), setup_s
    (time to build the backend), speedup (over eager NCHW, which is always measured,
    first) and max_rel_error (largest deviation from eager, in the units of
    convzoo.infer's 1e-4 tolerance check; 0 for eager; bf16 and int8 are approximate and
    do not keep it). ``compile`` adds a "fast+compile" row. ``precisions``: what
    :func:`convzoo.lowp.cpu_precisions` says of this CPU.
    """
    import torch

    from . import infer
    from .lowp import cpu_precisions

    model, threads = _prepare(
        name, input_size=input_size, batch=batch, small_input=small_input, width=width,
        num_classes=num_classes, threads=threads, repeats=repeats, warmup=warmup, training=False,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_size, generator=gen)
    calibration = torch.randn(128, *input_size, generator=gen)
    # Eager NCHW always runs first: the reference for the speed-up and the agreement.
    wanted = ["eager"] + [b for b in backends if b != "eager"]
    if compile and "fast+compile" not in wanted:
        wanted.append("fast+compile")
    rows: list[dict[str, Any]] = []
    reference = None
    with torch_threads(threads):
        for backend in wanted:
            started = time.perf_counter()
            if backend == "fast+compile":
                runner = infer.optimize(model, x, "fast", threads=threads, compile=True)
            else:
                runner = infer.optimize(
                    model, x, backend, threads=threads,
                    calibration=calibration if backend == "int8" else None,
                )  # fmt: skip
            setup = time.perf_counter() - started
            with torch.inference_mode():
                out = runner(x)
            if backend == "eager":
                reference = out
            timing = infer.measure_throughput(runner, x, repeats=repeats, warmup=warmup)
            rows.append(
                {
                    "backend": backend,
                    "label": BACKEND_LABELS[backend],
                    "images_per_second": timing["images_per_second"],
                    "latency_ms": timing["latency_ms"],
                    "latency_min_ms": timing["latency_min_ms"],
                    "setup_s": setup,
                    "max_rel_error": infer.max_relative_error(out, reference),
                    "approximate": backend in APPROXIMATE,
                }
            )
            del runner
    for r in rows:
        r["speedup"] = r["images_per_second"] / rows[0]["images_per_second"]
    return {
        **_describe(name, input_size, batch, small_input, width, num_classes, threads),
        "repeats": repeats,
        "warmup": warmup,
        "precisions": cpu_precisions(),
        "rows": rows,
    }


def _train_settings(name: str) -> tuple[str, dict[str, bool]]:
    """What ``convzoo train NAME`` does by default (on Fashion-MNIST, the default dataset,
    with its family's recipe when there is one) in the settings that change the speed of
    a step, and where that comes from."""
    from .train import build_config

    cfg = build_config(name)
    source = f"{cfg.recipe} recipe" if cfg.recipe else "no recipe"
    return source, {
        "channels_last": bool(cfg.channels_last),
        "amp": bool(cfg.amp),
        "compile": bool(cfg.compile),
    }


def _train_variants(name: str, which: str) -> list[tuple[str, dict[str, bool]]]:
    plain = {"channels_last": False, "amp": False, "compile": False}
    source, default = _train_settings(name)
    on = [("bf16 autocast" if k == "amp" else k) for k, v in default.items() if v]
    label = f"convzoo default ({source}: " + (" + ".join(on) if on else "NCHW fp32") + ")"
    variants = [("eager NCHW fp32", plain), (label, default)]
    if which == "all":
        variants += [
            ("channels_last", {**plain, "channels_last": True}),
            ("bf16 autocast", {**plain, "amp": True}),
            ("channels_last + bf16 autocast", {**plain, "channels_last": True, "amp": True}),
        ]
    return variants


def _time_train_steps(base, x, y, settings: dict, *, repeats: int, warmup: int) -> float:
    """Median seconds of a training step of a copy of ``base`` with ``settings``: the
    step ``convzoo train`` takes with its default optimizer (SGD, Nesterov momentum 0.9,
    weight decay 5e-4 on weights only) and loss."""
    import torch

    from .train.optim import build_optimizer, training_loss

    model = copy.deepcopy(base)
    if settings["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if settings["compile"] else model
    opt = build_optimizer(model, "sgd", lr=0.01, weight_decay=5e-4, momentum=0.9, nesterov=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings["amp"]):
            loss = training_loss(forward(x), y, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_train(
    name: str,
    *,
    input_size: tuple[int, int, int] = (3, 224, 224),
    batch: int = 128,
    small_input: bool = False,
    width: float = 1.0,
    num_classes: int = 1000,
    threads: int | None = None,
    repeats: int = 5,
    warmup: int = 2,
    variants: str = "default",
    seed: int = 0,
) -> dict[str, Any]:
    """Training-step throughput (forward, backward, SGD step) of ``name``.

    Every variant starts from the same weights and uses convzoo's default optimizer
    (SGD, Nesterov momentum 0.9, weight decay 5e-4 on weights only) and loss; they
    differ only in memory layout (channels_last), precision (``amp``: bfloat16
    autocast on the CPU) and torch.compile. "eager NCHW fp32" is the reference;
    "convzoo default" is what ``convzoo train NAME`` does without options: on
    Fashion-MNIST (its default dataset) the family's recipe, whose layout and precision
    settings the row uses (the label names the recipe).
    ``variants="all"`` adds channels_last, bf16 and both.
    """
    import torch

    base, threads = _prepare(
        name, input_size=input_size, batch=batch, small_input=small_input, width=width,
        num_classes=num_classes, threads=threads, repeats=repeats, warmup=warmup, training=True,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_size, generator=gen)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    rows: list[dict[str, Any]] = []
    with torch_threads(threads):
        for label, settings in _train_variants(name, variants):
            seconds = _time_train_steps(base, x, y, settings, repeats=repeats, warmup=warmup)
            rows.append(
                {
                    "variant": label,
                    "settings": settings,
                    "images_per_second": batch / seconds,
                    "step_ms": seconds * 1e3,
                }
            )
    ref = rows[0]["images_per_second"]
    for r in rows:
        r["speedup"] = r["images_per_second"] / ref
    return {
        **_describe(name, input_size, batch, small_input, width, num_classes, threads),
        "repeats": repeats,
        "warmup": warmup,
        "rows": rows,
    }


# -- printing ---------------------------------------------------------------------------


def _title(result: dict, what: str) -> str:
    form = "small-input" if result["small_input"] else "faithful"
    c, h, w = result["input_size"]
    width = "" if result["width"] == 1.0 else f", width {result['width']:g}"
    return (
        f"{result['model']} ({form}{width}, {result['num_classes']} classes): {what}, "
        f"input {c}x{h}x{w}, batch {result['batch']}, {result['threads']} thread"
        f"{'s' if result['threads'] != 1 else ''}, median of {result['repeats']} runs "
        f"after {result['warmup']} warm-up"
    )


def format_throughput(result: dict) -> str:
    """The throughput table as text."""
    from .lowp import describe_precisions

    lines = [_title(result, "inference")]
    if result.get("precisions"):
        lines.append(describe_precisions(result["precisions"]))
    lines.append("")
    head = (
        f"{'backend':<22} {'images/s':>10} {'ms/batch':>10} {'speed-up':>9} {'setup s':>8}  agrees"
    )
    lines.append(head)
    for r in result["rows"]:
        speed = f"{r['speedup']:.2f}x"
        if r["backend"] == "eager":
            agrees = "reference"
        elif r.get("approximate"):
            agrees = f"approximate ({r['max_rel_error']:.1e})"
        else:
            agrees = "yes" if r["max_rel_error"] <= 1e-4 else f"NO ({r['max_rel_error']:.1e})"
        lines.append(
            f"{r['label']:<22} {r['images_per_second']:>10.1f} {r['latency_ms']:>10.2f} "
            f"{speed:>9} {r['setup_s']:>8.2f}  {agrees}"
        )
    return "\n".join(lines)


def format_train(result: dict) -> str:
    """The training-step table as text."""
    lines = [_title(result, "training step (forward, backward, SGD)"), ""]
    width = max(22, *(len(r["variant"]) for r in result["rows"]))
    lines.append(f"{'variant':<{width}} {'images/s':>10} {'ms/step':>10} {'speed-up':>9}")
    for r in result["rows"]:
        lines.append(
            f"{r['variant']:<{width}} {r['images_per_second']:>10.1f} {r['step_ms']:>10.1f} "
            f"{r['speedup']:>8.2f}x"
        )
    return "\n".join(lines)
