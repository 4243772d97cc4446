"""convzoo summary: a model's anatomy, block by block."""

from __future__ import annotations

from .common import add_model_shape_arguments, model_shape


def register(sub) -> None:
    p = sub.add_parser("summary", help="per-block output shapes, parameters, multiply-adds")
    p.add_argument("model")
    add_model_shape_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..anatomy import summary
    from ..registry import get_model

    size, classes = model_shape(args)
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
