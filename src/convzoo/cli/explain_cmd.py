"""convzoo explain: class activation maps, top-k predictions, first-layer filters and
feature maps of a trained run, as PNG files and one HTML page."""

from __future__ import annotations

from .common import add_device_argument, command_line, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="show where a trained model looks (Grad-CAM), its filters and feature maps",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `convzoo train`")
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files (default: test images of the run's dataset, some predicted "
        "right and the most confident mistakes)",
    )
    p.add_argument(
        "--layer",
        default=None,
        metavar="NAME",
        help="the module whose Grad-CAM is shown, named as `convzoo summary` prints it "
        "(default: the last convolutional stage)",
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="where to write (default: RUN_DIR/explain)"
    )
    p.add_argument(
        "--topk",
        type=positive_int,
        default=3,
        metavar="K",
        help="classes shown per image (default: 3)",
    )
    add_device_argument(p)
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the dataset is (default: where training found it)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    import sys

    from ..explain import explain_run

    result = explain_run(
        args.run_dir,
        args.images or None,
        layer=args.layer,
        out=args.out,
        topk=args.topk,
        device=args.device,
        data_dir=args.data_dir,
        command=command_line(sys.argv[1:]),
    )
    for e in result.examples:
        cls, p = e.top[0]
        print(
            f"{e.name}: {cls} ({p * 100:.1f}%)" + (f", true {e.true_class}" if e.true_class else "")
        )
    print(f"Grad-CAM on {result.layer}; wrote {result.page}")
    return 0
