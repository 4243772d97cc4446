"""convzoo predict: the top classes of image files according to a trained model."""

from __future__ import annotations

from pathlib import Path

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
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    p.set_defaults(run=run)


def load_images(paths: list[str], data: dict):
    """uint8 (N, C, H, W): each file converted as the training images were."""
    import torch

    from ..data.datasets import load_image
    from ..errors import DataError

    size = tuple(int(s) for s in data["image_size"])
    images = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"{name}: no such image file; give the path of a PNG or JPEG file")
        images.append(load_image(path, int(data["in_channels"]), size))
    return torch.stack(images)


def run(args) -> int:
    import torch

    from ..artifacts import to_json
    from ..data.loader import Loader
    from ..evaluate import predict_logits
    from .eval_cmd import for_inference, load_trained, resolve_tta

    path, ckpt, model, device = load_trained(args)
    data = ckpt["data"]
    classes = [str(c) for c in data["classes"]]
    images = load_images(args.images, data)
    loader = Loader(
        images,
        torch.zeros(len(images), dtype=torch.long),
        batch_size=256,
        mean=data["mean"],
        std=data["std"],
        device=device,
        resize=data.get("resize"),
    )
    model = for_inference(model, next(iter(loader))[0], args.backend)
    logits, _ = predict_logits(model, loader, tta=resolve_tta(args, ckpt))
    k = min(args.topk, len(classes))
    probs, indices = logits.softmax(dim=1).topk(k, dim=1)
    predictions = [
        {
            "image": name,
            "top": [
                {"class": classes[int(i)], "index": int(i), "probability": float(p)}
                for p, i in zip(ps, ids, strict=True)
            ],
        }
        for name, ps, ids in zip(args.images, probs, indices, strict=True)
    ]
    if args.json:
        out = {
            "checkpoint": str(path),
            "model": ckpt.get("model_name"),
            "backend": args.backend,
            "predictions": predictions,
        }
        print(to_json(out, indent=None))
        return 0
    width = max(len(c) for c in classes)
    for pred in predictions:
        print(pred["image"])
        for rank, top in enumerate(pred["top"], 1):
            print(f"  {rank:>2}. {top['class'].ljust(width)}  {top['probability'] * 100:6.2f}%")
    return 0
