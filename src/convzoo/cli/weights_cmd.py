"""convzoo weights convert: torchvision/timm files <-> convzoo safetensors."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("weights", help="convert pretrained weights (torchvision, timm, convzoo)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=type(p))
    c = verbs.add_parser(
        "convert",
        help="torchvision/timm -> convzoo safetensors, or convzoo -> torchvision .pth",
        description=(
            "With --from: IN is a torchvision or timm file (.pth or .safetensors) and OUT "
            "a convzoo safetensors file of --model. With --to torchvision: IN is a convzoo "
            "run directory, checkpoint or safetensors file of a faithful model, and OUT a "
            "state dict with torchvision's names (.pth, for torch.load and "
            "load_state_dict). Names are mapped by per-family tables (docs/pretrained.md)."
        ),
    )
    c.add_argument("input", metavar="IN")
    c.add_argument("output", metavar="OUT")
    way = c.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="source", choices=("torchvision", "timm"),
                     help="the library whose names IN has")  # fmt: skip
    way.add_argument("--to", dest="target", choices=("torchvision", "timm"),
                     help="the library whose names OUT gets")  # fmt: skip
    c.add_argument("--model", default=None, help="the model (required with --from)")
    c.set_defaults(run=run)
    p.set_defaults(run=lambda args: _usage(p))


def _usage(p) -> int:
    p.print_help(sys.stderr)
    return 2


def run(args) -> int:
    from ..errors import ConfigError

    out = Path(args.output)
    if out.exists() and out.resolve() == Path(args.input).resolve():
        raise ConfigError("OUT would overwrite IN; choose another OUT")
    if args.source is not None:
        if args.model is None:
            raise ConfigError("--from needs --model NAME (`convzoo list`)")
        return _from_library(args.input, out, args.model, args.source)
    return _to_library(args.input, out, args.model, args.target)


def _from_library(src: str, out: Path, name: str, source: str) -> int:
    import torch

    from ..artifacts import write_model_safetensors
    from ..pretrained import IMAGENET_MEAN, IMAGENET_SIZE, IMAGENET_STD, source_num_classes
    from ..registry import check_model_name, get_model

    check_model_name(name)
    with torch.device("meta"):
        shape_only = get_model(name)
    n = source_num_classes(src, name, shape_only)
    model = get_model(name, num_classes=n, weights=src, weights_source=source)
    options = {"num_classes": n, "in_channels": 3, "small_input": False, "width": 1.0}
    meta = dict(model_name=name, model_options=options, mean=list(IMAGENET_MEAN),
                std=list(IMAGENET_STD), image_size=[IMAGENET_SIZE, IMAGENET_SIZE],
                in_channels=3, classes=[str(i) for i in range(n)])  # fmt: skip
    write_model_safetensors(out, model.state_dict(), meta)
    print(f"{out}: {name}, {n} classes, {model.pretrained.loaded} tensors from {source} names")
    return 0


def _to_library(src: str, out: Path, name: str | None, target: str) -> int:
    import torch

    from ..artifacts import atomic_path
    from ..errors import CheckpointError
    from ..pretrained import read_weights, to_source
    from ..registry import get_model

    wf = read_weights(src, name or "")
    if not wf.is_convzoo:
        raise CheckpointError(f"{src} is not a convzoo file (a run directory, checkpoint or "
                              "safetensors file written by convzoo)")  # fmt: skip
    stored = wf.meta.get("model_name")
    if name is not None and stored != name:
        raise CheckpointError(f"{src} holds weights of {stored}, not {name}")
    options = dict(wf.meta.get("model_options") or {})
    if options.get("small_input") or float(options.get("width", 1.0)) != 1.0:
        raise CheckpointError(
            f"{src} is a {'small-input' if options.get('small_input') else 'narrowed'} "
            f"{stored}; only the faithful form at width 1 has a {target} counterpart"
        )
    model = get_model(stored, **options, weights=src, weights_source="convzoo")
    state = to_source(model, stored, target)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    print(f"{out}: {stored} with {target}'s names ({len(state)} tensors)")
    return 0
