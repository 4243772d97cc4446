"""convzoo bench: inference throughput per backend, and training-step throughput.

``convzoo bench throughput MODEL`` and ``convzoo bench train MODEL`` parse their
options, call :func:`convzoo.bench.bench_throughput` / :func:`convzoo.bench.bench_train`
and print the table (or, with ``--json``, one strict JSON object).
"""

from __future__ import annotations

from ..bench import ALL_BACKENDS, BACKEND_CHOICES, DEFAULT_BATCH, TRAIN_VARIANTS
from .common import add_model_shape_arguments, model_shape, non_negative_int, positive_int

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
        type=non_negative_int,
        default=2,
        metavar="N",
        help="untimed runs first (default: 2)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")


def register(sub) -> None:
    p = sub.add_parser("bench", help="inference and training throughput")
    inner = p.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=type(p))
    t = inner.add_parser(
        "throughput",
        help="inference images/s: eager NCHW, fast, onnxruntime, bf16 and int8 backends, "
        "and the CPU's native bf16/int8 paths",
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
        help="which backend to time (default: all; eager NCHW is always timed: the "
        "reference; int8 is calibrated on random images: its figures are of speed only)",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        help="also time fast + torch.compile (compiling takes tens of seconds on a CPU; "
        "default: off)",
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
    from ..artifacts import to_json
    from ..bench import bench_throughput, format_throughput

    backends = ALL_BACKENDS if args.backend == "all" else (args.backend,)
    result = bench_throughput(
        args.model, backends=backends, compile=args.compile, **_bench_options(args)
    )
    print(to_json(result, indent=None) if args.json else format_throughput(result))
    return 0


def run_train(args) -> int:
    from ..artifacts import to_json
    from ..bench import bench_train, format_train

    result = bench_train(args.model, variants=args.variants, **_bench_options(args))
    print(to_json(result, indent=None) if args.json else format_train(result))
    return 0
