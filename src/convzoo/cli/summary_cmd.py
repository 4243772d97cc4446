"""convzoo summary: a model's anatomy, block by block."""

from __future__ import annotations

from .common import add_model_shape_arguments, model_shape


def register(sub) -> None:
    p = sub.add_parser("summary", help="per-block output shapes, parameters, multiply-adds")
    p.add_argument("model")
    add_model_shape_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    """Build the model on the meta device (shapes only: no weights are allocated, so
    any width prints at once), check that the input is large enough and that one image
    would fit in memory, then print the table."""
    import torch

    from ..anatomy import check_memory, summary
    from ..models import check_input_size
    from ..registry import get_model

    size, classes = model_shape(args)
    options = dict(
        num_classes=classes,
        in_channels=size[0],
        small_input=args.small_input,
        width=args.width,
    )
    with torch.device("meta"):
        model = get_model(args.model, **options)
    model.name = args.model
    check_input_size(model, size, flag="--input")
    check_memory(
        args.model,
        options,
        size,
        1,
        training=False,
        fix="lower --width or --input",
    )
    print(summary(model, size))
    return 0
