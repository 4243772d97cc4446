"""convzoo predict: the top classes of image files according to a trained model."""

from __future__ import annotations

from .common import positive_int
from .eval_cmd import add_model_arguments, add_tta_argument


def register(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a trained model")
    add_model_arguments(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument(
        "--topk",
        type=positive_int,
        default=3,
        metavar="K",
        help="how many classes to show per image (default: 3)",
    )
    add_tta_argument(p)
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="bf16, int8 and auto: where the run's dataset is, for the accuracy check "
        "(default: where training found it)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..artifacts import to_json
    from ..infer import classify_images
    from .eval_cmd import format_gate, load_trained, resolve_tta

    path, ckpt, model, device = load_trained(args)
    classes = [str(c) for c in ckpt["data"]["classes"]]
    info: dict = {}
    predictions = classify_images(
        model,
        ckpt,
        device,
        args.images,
        backend=args.backend,
        tta=resolve_tta(args, ckpt),
        topk=args.topk,
        data_dir=args.data_dir,
        max_accuracy_drop=args.max_accuracy_drop,
        info=info,
    )
    if args.json:
        out = {
            "checkpoint": str(path),
            "model": ckpt.get("model_name"),
            "backend": info["backend"],
            "requested_backend": args.backend,
            "accuracy_gate": info.get("accuracy_gate"),
            "predictions": predictions,
        }
        print(to_json(out, indent=None))
        return 0
    if info.get("accuracy_gate"):
        print(format_gate(info["accuracy_gate"]))
    width = max(len(c) for c in classes)
    for pred in predictions:
        print(pred["image"])
        for rank, top in enumerate(pred["top"], 1):
            print(f"  {rank:>2}. {top['class'].ljust(width)}  {top['probability'] * 100:6.2f}%")
    return 0
