"""convzoo bench: inference throughput per backend, and training-step throughput.

``convzoo bench throughput MODEL`` times eager NCHW inference, convzoo's "fast" backend
and onnxruntime on random input (median latency per batch over repeated timed runs
after a warm-up) and prints the speed-up over eager. ``convzoo bench train MODEL``
times a training step (forward, backward, SGD step) in eager NCHW float32 and with
convzoo's default training settings. The functions behind both,
:func:`bench_throughput` and :func:`bench_train`, return plain dicts
(``benchmarks/throughput.py`` uses them).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from typing import Any

from ..device import available_cores
from .common import add_model_shape_arguments, model_shape, positive_int

BACKEND_CHOICES = ("eager", "fast", "onnxruntime", "all")
BACKEND_LABELS = {
    "eager": "eager NCHW",
    "fast": "fast",
    "fast+compile": "fast + torch.compile",
    "onnxruntime": "onnxruntime",
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
    from ..registry import get_model

    model = get_model(
        name,
        num_classes=num_classes,
        in_channels=input_size[0],
        small_input=small_input,
        width=width,
    )
    model.name = name
    return model


def _check_size(model, input_size, small_input: bool) -> None:
    from ..errors import ModelError

    need = getattr(model, "min_input_size", 1)
    if min(input_size[1:]) < need:
        hint = "" if small_input else " or use --small-input"
        raise ModelError(
            f"{model.name} needs inputs of at least {need}x{need} px in this form, got "
            f"{input_size[1]}x{input_size[2]}; use a larger --input{hint}"
        )


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
    backends: tuple[str, ...] = ("eager", "fast", "onnxruntime"),
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

    Each row: backend, label, images_per_s, latency_ms (median per batch), setup_s
    (time to build the backend), speedup (over eager NCHW, which is always measured,
    first) and max_rel_error (largest deviation from eager, in the units of
    convzoo.infer's 1e-4 tolerance check; 0 for eager). ``compile`` adds a
    "fast+compile" row.
    """
    import torch

    from .. import infer

    threads = threads or available_cores()
    model = _build(
        name, input_size=input_size, small_input=small_input, width=width, num_classes=num_classes
    ).eval()
    _check_size(model, input_size, small_input)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_size, generator=gen)
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
                runner = infer.optimize(model, x, backend, threads=threads)
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
                    "images_per_s": timing["images_per_s"],
                    "latency_ms": timing["latency_ms"],
                    "latency_min_ms": timing["latency_min_ms"],
                    "setup_s": setup,
                    "max_rel_error": infer.max_relative_error(out, reference),
                }
            )
            del runner
    for r in rows:
        r["speedup"] = r["images_per_s"] / rows[0]["images_per_s"]
    return {
        **_describe(name, input_size, batch, small_input, width, num_classes, threads),
        "repeats": repeats,
        "warmup": warmup,
        "rows": rows,
    }


def _train_settings(name: str) -> tuple[str, dict[str, bool]]:
    """What ``convzoo train NAME`` does by default (on Fashion-MNIST, the default dataset,
    with its family's recipe when there is one) in the settings that change the speed of
    a step, and where that comes from."""
    from ..train.config import build_config

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
    """Median seconds of a training step of a copy of ``base`` with ``settings``."""
    import statistics

    import torch

    from ..train.loop import _param_groups, training_loss

    model = copy.deepcopy(base)
    if settings["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if settings["compile"] else model
    # convzoo train's default optimizer: SGD, Nesterov momentum 0.9, weight decay 5e-4
    # on weights only.
    opt = torch.optim.SGD(_param_groups(model, 5e-4), lr=0.01, momentum=0.9, nesterov=True)

    def step() -> None:
        amp = settings["amp"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
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

    threads = threads or available_cores()
    base = _build(
        name, input_size=input_size, small_input=small_input, width=width, num_classes=num_classes
    ).train()
    _check_size(base, input_size, small_input)
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
                    "images_per_s": batch / seconds,
                    "step_ms": seconds * 1e3,
                }
            )
    ref = rows[0]["images_per_s"]
    for r in rows:
        r["speedup"] = r["images_per_s"] / ref
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
    lines = [_title(result, "inference"), ""]
    head = (
        f"{'backend':<22} {'images/s':>10} {'ms/batch':>10} {'speed-up':>9} {'setup s':>8}  agrees"
    )
    lines.append(head)
    for r in result["rows"]:
        speed = f"{r['speedup']:.2f}x"
        agrees = (
            "reference"
            if r["backend"] == "eager"
            else ("yes" if r["max_rel_error"] <= 1e-4 else f"NO ({r['max_rel_error']:.1e})")
        )
        lines.append(
            f"{r['label']:<22} {r['images_per_s']:>10.1f} {r['latency_ms']:>10.2f} "
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
            f"{r['variant']:<{width}} {r['images_per_s']:>10.1f} {r['step_ms']:>10.1f} "
            f"{r['speedup']:>8.2f}x"
        )
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------


def _common(p) -> None:
    p.add_argument("model", help="a model name from `convzoo list`")
    add_model_shape_arguments(p)
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads for torch and onnxruntime (default: every core this process may use)",
    )
    p.add_argument(
        "--repeats", type=positive_int, default=5, metavar="N", help="timed runs (default: 5)"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        metavar="N",
        help="untimed runs first (default: 2)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def register(sub) -> None:
    p = sub.add_parser("bench", help="inference and training throughput")
    inner = p.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=type(p))
    t = inner.add_parser(
        "throughput", help="inference images/s: eager NCHW, fast and onnxruntime backends"
    )
    _common(t)
    t.add_argument(
        "--batch",
        type=positive_int,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"images per batch (default: {DEFAULT_BATCH})",
    )
    t.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="all",
        help="which backend to time (default: all; eager NCHW is always timed: the reference)",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        help="also time fast + torch.compile (compiling takes tens of seconds on a CPU)",
    )
    t.set_defaults(run=run_throughput)
    tr = inner.add_parser(
        "train", help="training-step images/s: eager NCHW fp32 and convzoo's default settings"
    )
    _common(tr)
    tr.add_argument(
        "--batch",
        type=positive_int,
        default=128,
        metavar="N",
        help="images per step (default: 128, convzoo train's default)",
    )
    tr.add_argument(
        "--variants",
        choices=TRAIN_VARIANTS,
        default="default",
        help="default: eager NCHW fp32 and convzoo's default settings; all: also "
        "channels_last, bf16 autocast and both",
    )
    tr.set_defaults(run=run_train)
    p.set_defaults(run=lambda args: _usage(p))


def _usage(p) -> int:
    p.print_help()
    return 2


def _bench_options(args) -> dict:
    """The options both benchmarks take, as keyword arguments."""
    from ..errors import ConfigError

    if args.warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {args.warmup}")
    size, classes = model_shape(args)
    return {
        "input_size": size,
        "batch": args.batch,
        "small_input": args.small_input,
        "width": args.width,
        "num_classes": classes,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
    }


def run_throughput(args) -> int:
    backends = ("eager", "fast", "onnxruntime") if args.backend == "all" else (args.backend,)
    result = bench_throughput(
        args.model, backends=backends, compile=args.compile, **_bench_options(args)
    )
    print(json.dumps(result) if args.json else format_throughput(result))
    return 0


def run_train(args) -> int:
    result = bench_train(args.model, variants=args.variants, **_bench_options(args))
    print(json.dumps(result) if args.json else format_train(result))
    return 0
