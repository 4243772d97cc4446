"""convzoo export: a trained model as ONNX, TorchScript or safetensors."""

from __future__ import annotations

from ..export import FORMATS


def register(sub) -> None:
    p = sub.add_parser("export", help="export a trained model (onnx, torchscript, safetensors)")
    p.add_argument(
        "target",
        metavar="RUN_DIR|CHECKPOINT",
        help="a run directory written by `convzoo train`, or a checkpoint file",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="the file format (required)")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="output file, or a folder (default: model-<which>.onnx, "
        "model-<which>.torchscript.pt or model-<which>.safetensors in the run directory; "
        "never one of the run's own files)",
    )
    p.add_argument(
        "--which",
        choices=("best", "last"),
        default="best",
        help="which checkpoint of a run directory (default: best)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from ..export import export_checkpoint

    path = export_checkpoint(args.target, args.format, args.out, which=args.which)
    size = path.stat().st_size
    extra = " (checked against PyTorch with onnxruntime)" if args.format == "onnx" else ""
    print(f"wrote {path} ({size / 1e6:.2f} MB){extra}")
    return 0
