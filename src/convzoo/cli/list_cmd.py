"""convzoo list: every registered model with its parameter count."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("list", help="list the models with their parameter counts")
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'resnet*'")
    p.add_argument("--num-classes", type=int, default=1000, help="default: 1000")
    p.add_argument(
        "--small-input",
        action="store_true",
        help="count the small-input forms (default: the faithful forms)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from ..registry import get_model, list_models

    names = list_models(args.pattern)
    width = max((len(n) for n in names), default=5)
    print(f"{'model'.ljust(width)}  {'params':>12}")
    for name in names:
        with torch.device("meta"):
            model = get_model(name, num_classes=args.num_classes, small_input=args.small_input)
        print(f"{name.ljust(width)}  {sum(p.numel() for p in model.parameters()):>12,}")
    return 0
