"""Inference throughput of the six families' default models: eager NCHW against
convzoo's "fast" backend and onnxruntime, plus the training-step figure.

For each of alexnet, vgg11_bn, nin, googlenet, resnet18 and densenet121:

* small-input form, 1x28x28, 10 classes, batch 64;
* faithful form, 3x224x224, 1000 classes, batch 64 and batch 1;

each timed as ``convzoo bench throughput`` does (random input; median latency per
batch over ``--repeats`` timed runs after ``--warmup`` untimed ones; eager NCHW is the
reference for the speed-up, and every backend's output is checked against it to 1e-4).
Then a training step (forward, backward, SGD step) of resnet18 in its small-input form,
batch 128, as ``convzoo bench train --variants all`` does: eager NCHW fp32 against
convzoo's default training settings, channels_last and bf16 autocast.

Prints the tables and appends them to benchmarks/RESULTS.md. The figures only mean
something on a quiet machine: nothing else should run while it does.

    python benchmarks/throughput.py [--quick] [--models resnet18,...] [--threads N]
                                    [--repeats N] [--no-train] [--no-record]

``--quick``: resnet18, densenet121 and googlenet only, 2 timed runs after 1 warm-up,
no batch-1 rows, and the training step without the extra variants.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from convzoo.bench import (  # noqa: E402
    bench_throughput,
    bench_train,
    format_throughput,
    format_train,
)
from convzoo.device import available_cores  # noqa: E402

MODELS = ("alexnet", "vgg11_bn", "nin", "googlenet", "resnet18", "densenet121")
QUICK_MODELS = ("resnet18", "densenet121", "googlenet")
# (label, small_input, input size, classes, batch)
SETTINGS = (
    ("28 px", True, (1, 28, 28), 10, 64),
    ("224 px", False, (3, 224, 224), 1000, 64),
    ("224 px", False, (3, 224, 224), 1000, 1),
)
# The targets: "fast" against eager NCHW inference at batch 64.
TARGET_MODELS = ("resnet18", "densenet121", "googlenet")
TARGETS = {"28 px": 1.5, "224 px": 1.3}
TRAIN_TARGET = 1.05  # convzoo's default training step against eager NCHW fp32, resnet18


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="three models, fewer runs")
    p.add_argument("--models", default=None, help="comma-separated models (default: the six)")
    p.add_argument("--threads", type=int, default=None, help="default: every usable core")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs (default 2; quick 1)")
    p.add_argument("--no-train", action="store_true", help="skip the training-step figure")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()

    models = (
        tuple(args.models.split(",")) if args.models else QUICK_MODELS if args.quick else MODELS
    )
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    threads = args.threads or available_cores()
    settings = [s for s in SETTINGS if not (args.quick and s[4] == 1)]

    rows: list[list[str]] = []
    speedups: dict[tuple[str, str, int], float] = {}
    for label, small, size, classes, batch in settings:
        for name in models:
            result = bench_throughput(
                name,
                input_size=size,
                batch=batch,
                small_input=small,
                num_classes=classes,
                threads=threads,
                repeats=repeats,
                warmup=warmup,
            )
            print(format_throughput(result), end="\n\n", flush=True)
            by = {r["backend"]: r for r in result["rows"]}
            speedups[(name, label, batch)] = by["fast"]["speedup"]
            agree = all(r["max_rel_error"] <= 1e-4 for r in result["rows"])
            rows.append(
                [
                    name,
                    f"{label} ({'x'.join(map(str, size))})",
                    str(batch),
                    f"{by['eager']['images_per_second']:.1f}",
                    f"{by['fast']['images_per_second']:.1f}",
                    f"{by['fast']['speedup']:.2f}x",
                    f"{by['onnxruntime']['images_per_second']:.1f}",
                    f"{by['onnxruntime']['speedup']:.2f}x",
                    "yes" if agree else "NO",
                ]
            )

    header = [
        "model",
        "input",
        "batch",
        "eager NCHW img/s",
        "fast img/s",
        "fast speed-up",
        "onnxruntime img/s",
        "onnxruntime speed-up",
        "outputs agree (1e-4)",
    ]
    checks = []
    for name in TARGET_MODELS:
        for label, target in TARGETS.items():
            got = speedups.get((name, label, 64))
            if got is not None:
                verdict = "met" if got >= target else "NOT met"
                checks.append(f"{name} {label} batch 64: {got:.2f}x (target {target}x, {verdict})")

    train_rows: list[list[str]] = []
    if not args.no_train:
        result = bench_train(
            "resnet18",
            input_size=(1, 28, 28),
            small_input=True,
            num_classes=10,
            batch=128,
            threads=threads,
            repeats=repeats,
            warmup=warmup,
            variants="default" if args.quick else "all",
        )
        print(format_train(result), end="\n\n", flush=True)
        for r in result["rows"]:
            train_rows.append(
                [
                    "resnet18",
                    "28 px (1x28x28)",
                    "128",
                    r["variant"],
                    f"{r['images_per_second']:.1f}",
                    f"{r['speedup']:.2f}x",
                ]
            )
        got = result["rows"][1]["speedup"]
        verdict = "met" if got >= TRAIN_TARGET else "NOT met"
        if not any(result["rows"][1]["settings"].values()):
            # The same settings as the reference: the ratio is measurement noise.
            verdict = "NOT met: the default is eager NCHW fp32 itself"
        checks.append(
            f"resnet18 training step, convzoo default vs eager NCHW fp32: {got:.2f}x "
            f"(target {TRAIN_TARGET}x, {verdict})"
        )

    print("\n".join(checks))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = (
        f"{threads} threads (torch and onnxruntime); median of {repeats} timed batches after "
        f'{warmup} warm-up; random input, random weights; "fast" = convzoo.infer.optimize '
        f"(BN folded, fused oneDNN convolutions, channels-last); load average at the end: "
        f"{load:.1f}.\n\n" + "\n".join(f"- {c}" for c in checks)
    )
    if not args.no_record:
        from _record import append_section

        append_section("Inference throughput: eager NCHW, fast, onnxruntime", header, rows, note)
        if train_rows:
            append_section(
                "Training step throughput (forward, backward, SGD step)",
                ["model", "input", "batch", "settings", "img/s", "speed-up"],
                train_rows,
                f"{threads} threads; median of {repeats} steps after {warmup} warm-up.",
            )
        print(f"appended to {Path(__file__).with_name('RESULTS.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
