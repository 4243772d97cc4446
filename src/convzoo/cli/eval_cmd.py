"""convzoo eval: test-set accuracy, per-class accuracy and confusion matrix of a trained model."""

from __future__ import annotations

import argparse
import math

from .common import add_device_argument, non_negative_float, positive_int

CHECKPOINT_NAMES = ("best", "last")
BACKENDS = ("fast", "onnxruntime", "eager", "bf16", "int8", "auto")
DEFAULT_MAX_DROP = 0.2  # convzoo.lowp.DEFAULT_MAX_DROP (not imported: keeps --help quick)


def add_model_arguments(p) -> None:
    """The arguments that pick a trained model: TARGET, --which, --no-ema, --device."""
    p.add_argument(
        "target",
        metavar="RUN_DIR|CHECKPOINT",
        help="a run directory written by `convzoo train`, or a checkpoint file",
    )
    p.add_argument(
        "--which",
        choices=CHECKPOINT_NAMES,
        default="best",
        help="which checkpoint of a run directory (default: best)",
    )
    p.add_argument(
        "--no-ema",
        action="store_true",
        help="use the raw weights even when the checkpoint has EMA weights (default: EMA "
        "weights when present)",
    )
    add_device_argument(p)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="fast",
        help="inference backend: fast (batch norm folded, fused kernels; default), "
        "onnxruntime, or eager (the model as trained), which give the same results to "
        "1e-4; bf16 or int8 (approximate: first checked against float32 on the run's "
        "validation images, refused when they lose more than --max-accuracy-drop); auto "
        "(the fastest backend on this machine that passes that check, else fast)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=non_negative_float,
        default=DEFAULT_MAX_DROP,
        metavar="POINTS",
        help="bf16, int8 and auto: the most validation accuracy, in percentage points, an "
        f"approximate backend may lose against float32 (default: {DEFAULT_MAX_DROP:g})",
    )


def add_tta_argument(p) -> None:
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time augmentation: average the image and its horizontal flip "
        "(default: as the run was trained, i.e. its recipe's tta setting)",
    )


def resolve_tta(args, ckpt: dict) -> bool:
    """--tta/--no-tta when given, else the ``tta`` setting the run was trained with."""
    if args.tta is not None:
        return bool(args.tta)
    config = ckpt.get("config")
    return bool(config.get("tta", False)) if isinstance(config, dict) else False


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model on its dataset's test set")
    add_model_arguments(p)
    add_tta_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the dataset is (default: where training found it)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=512,
        metavar="N",
        help="evaluation batch size (default: 512)",
    )
    p.set_defaults(run=run)


def load_trained(args):
    """(checkpoint path, checkpoint dict, model in eval mode on the device, device) of the
    options of :func:`add_model_arguments`."""
    from ..infer import load_trained as load

    return load(args.target, which=args.which, use_ema=not args.no_ema, device=args.device)


def _pct(x: float) -> str:
    return "   n/a" if math.isnan(x) else f"{x * 100:6.2f}%"


def format_gate(gate: dict) -> str:
    """The accuracy check of an approximate backend, one line."""
    return (
        f"checked     {gate['backend']} against float32 on {gate['images']:,} validation "
        f"images: top-1 agreement {gate['agreement'] * 100:.2f}%, accuracy "
        f"{gate['reference_accuracy'] * 100:.2f}% -> {gate['accuracy'] * 100:.2f}% "
        f"(drop {gate['drop_points']:.2f} points, allowed {gate['max_drop_points']:g})"
    )


def format_report(result, classes: list[str]) -> str:
    """Per-class accuracy and the confusion matrix as text."""
    width = max(len(c) for c in classes)
    lines = ["per-class accuracy"]
    for i, (name, acc) in enumerate(zip(classes, result.per_class_accuracy, strict=True)):
        support = sum(result.confusion[i])
        lines.append(f"  {i:>2} {name.ljust(width)}  {_pct(acc)}  ({support:,} images)")
    cell = max(4, len(f"{max(max(r) for r in result.confusion):,}") + 1)
    lines.append("")
    lines.append("confusion matrix (rows: true class, columns: predicted class)")
    head = " " * (width + 6) + "".join(f"{j:>{cell}}" for j in range(len(classes)))
    lines.append(head)
    for i, row in enumerate(result.confusion):
        lines.append(f"  {i:>2} {classes[i].ljust(width)} " + "".join(f"{c:>{cell},}" for c in row))
    return "\n".join(lines)


def run(args) -> int:
    from ..artifacts import to_json
    from ..infer import evaluate_test_set

    path, ckpt, model, device = load_trained(args)
    data = ckpt["data"]
    classes = [str(c) for c in data["classes"]]
    tta = resolve_tta(args, ckpt)
    info: dict = {}
    result = evaluate_test_set(
        model,
        ckpt,
        device,
        backend=args.backend,
        tta=tta,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        max_accuracy_drop=args.max_accuracy_drop,
        info=info,
    )
    gate = info.get("accuracy_gate")
    if args.json:
        out = {
            "checkpoint": str(path),
            "model": ckpt.get("model_name"),
            "dataset": str(data["dataset"]),
            "epoch": ckpt.get("epoch"),
            "tta": tta,
            "backend": info["backend"],
            "requested_backend": args.backend,
            "accuracy_gate": gate,
            **(
                {"auto": {"images_per_second": info["timings"], "refused": info["refused"]}}
                if "timings" in info
                else {}
            ),
            "classes": classes,
            **result.to_dict(),
        }
        print(to_json(out, indent=None))
        return 0
    chosen = info["backend"] + (" chosen by auto" if args.backend == "auto" else "")
    print(
        f"checkpoint  {path}  ({ckpt.get('model_name')}, epoch {ckpt.get('epoch')}, "
        f"{chosen} backend)"
    )
    if gate:
        print(format_gate(gate))
    for name, why in info.get("refused", {}).items():
        print(f"not used    {name}: {why.split(', more than')[0]}")
    print(
        f"test set    {data['dataset']}, {result.num_samples:,} images"
        + ("  (TTA: image + horizontal flip)" if tta else "")
    )
    print(f"accuracy    {result.accuracy * 100:.2f}%   loss {result.loss:.4f}")
    print()
    print(format_report(result, classes))
    return 0
