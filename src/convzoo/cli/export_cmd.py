"""convzoo export: a trained model as ONNX, TorchScript or safetensors."""

from __future__ import annotations

from ..export import FORMATS
from .common import non_negative_float
from .eval_cmd import DEFAULT_MAX_DROP


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
    p.add_argument(
        "--int8",
        action="store_true",
        help="onnx only: the model quantized to int8 (calibrated on the run's training "
        "images, checked on its validation images; refused when it loses more than "
        "--max-accuracy-drop), plus a JSON file with the calibration and the figures "
        "(default: float32; default file model-<which>.int8.onnx)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=non_negative_float,
        default=DEFAULT_MAX_DROP,
        metavar="POINTS",
        help="--int8: the most validation accuracy, in percentage points, the int8 model "
        f"may lose against float32 (default: {DEFAULT_MAX_DROP:g})",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="--int8: where the run's dataset is (default: where training found it)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from ..export import export_checkpoint

    path = export_checkpoint(
        args.target,
        args.format,
        args.out,
        which=args.which,
        int8=args.int8,
        max_accuracy_drop=args.max_accuracy_drop,
        data_dir=args.data_dir,
    )
    size = path.stat().st_size
    if args.int8:
        import json

        from ..export import int8_sidecar

        sidecar = int8_sidecar(path)
        gate = json.loads(sidecar.read_text())["accuracy_gate"]
        print(
            f"wrote {path} ({size / 1e6:.2f} MB, int8) and {sidecar}: on "
            f"{gate['images']:,} validation images, top-1 agreement with float32 "
            f"{gate['agreement'] * 100:.2f}%, accuracy drop {gate['drop_points']:.2f} points"
        )
        return 0
    extra = " (checked against PyTorch with onnxruntime)" if args.format == "onnx" else ""
    print(f"wrote {path} ({size / 1e6:.2f} MB){extra}")
    return 0
