"""convzoo summary: a model's anatomy, block by block."""

from __future__ import annotations

from .common import parse_input_size, positive_float, positive_int


def register(sub) -> None:
    p = sub.add_parser("summary", help="per-block output shapes, parameters, multiply-adds")
    p.add_argument("model")
    p.add_argument(
        "--input",
        type=parse_input_size,
        default=None,
        metavar="CxHxW",
        help="input size (default: 3x224x224, or 1x28x28 with --small-input)",
    )
    p.add_argument("--small-input", action="store_true", help="the 28-32 px form")
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="default: 1000, or 10 with --small-input",
    )
    p.add_argument("--width", type=positive_float, default=1.0, help="channel multiplier")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..anatomy import summary
    from ..registry import get_model

    size = args.input or ((1, 28, 28) if args.small_input else (3, 224, 224))
    classes = args.num_classes or (10 if args.small_input else 1000)
    model = get_model(
        args.model,
        num_classes=classes,
        in_channels=size[0],
        small_input=args.small_input,
        width=args.width,
    )
    model.name = args.model
    print(summary(model, size))
    return 0
