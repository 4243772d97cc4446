"""Inference throughput of the six families' default models: eager NCHW against
convzoo's "fast" backend, onnxruntime, bf16 and int8, plus the training-step figure.

For each of alexnet, vgg11_bn, nin, googlenet, resnet18 and densenet121:

* small-input form, 1x28x28, 10 classes, batch 64;
* faithful form, 3x224x224, 1000 classes, batch 64 and batch 1;

each timed as ``convzoo bench throughput`` does (random input; median latency per
batch over ``--repeats`` timed runs after ``--warmup`` untimed ones; eager NCHW is the
reference for the speed-up, and every backend's output is checked against it to 1e-4).
Then a training step (forward, backward, SGD step) of resnet18 in its small-input form,
batch 128, as ``convzoo bench train --variants all`` does: eager NCHW fp32 against
convzoo's default training settings, channels_last and bf16 autocast.

Every table is recorded with the CPU's native bf16/int8 paths
(:func:`convzoo.lowp.cpu_precisions`). ``--runs RUN_DIR...`` adds, for each trained
run, its test accuracy with "fast", "bf16" and "int8" (each approximate backend after
the accuracy gate on the run's validation split) and the difference from float32.
``--int8-paths RUN_DIR`` compares the two int8 routes on that run: onnxruntime's
``quantize_static`` (what convzoo uses) and PyTorch's PT2E with X86InductorQuantizer
(torchao; compiled by inductor with frozen weights), on speed and kept accuracy.

Prints the tables and appends them to benchmarks/RESULTS.md. The figures only mean
something on a quiet machine: nothing else should run while it does.

    python benchmarks/throughput.py [--quick] [--models resnet18,...] [--threads N]
                                    [--repeats N] [--no-train] [--no-record]
                                    [--runs RUN_DIR...] [--int8-paths RUN_DIR]

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
from convzoo.lowp import cpu_precisions, describe_precisions  # noqa: E402

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
# Lower precision against eager NCHW fp32, small-input form at batch 64, where the CPU
# has the instructions (bf16: AMX or AVX512-BF16; int8: VNNI or AMX-INT8).
LOWP_TARGET_MODELS = ("resnet18", "densenet121")
LOWP_TARGETS = {"bf16": 2.5, "int8": 3.0}
ACCURACY_TARGET = 0.2  # points of test accuracy an approximate backend may lose


def accuracy_rows(runs: list[str], threads: int) -> tuple[list[list[str]], list[str]]:
    """Test accuracy of each trained run with fast, bf16 and int8 (after the gate)."""
    import torch

    from convzoo.bench import torch_threads
    from convzoo.infer import evaluate_test_set, load_trained
    from convzoo.lowp import AccuracyGateError

    rows, checks = [], []
    with torch_threads(threads):
        for run in runs:
            _, ckpt, model, device = load_trained(run, device="cpu")
            figures: dict[str, dict] = {}
            for backend in ("fast", "bf16", "int8"):
                info: dict = {}
                try:
                    result = evaluate_test_set(
                        model, ckpt, device, backend=backend, info=info,
                        max_accuracy_drop=100.0,
                    )  # fmt: skip
                except AccuracyGateError as exc:  # not reached with a 100-point allowance
                    figures[backend] = {"error": str(exc)}
                    continue
                figures[backend] = {"accuracy": result.accuracy, "gate": info["accuracy_gate"]}
            ref = figures["fast"]["accuracy"]
            for backend, f in figures.items():
                gate = f.get("gate") or {}
                diff = (f["accuracy"] - ref) * 100
                rows.append(
                    [
                        ckpt.get("model_name"),
                        Path(run).name,
                        backend,
                        f"{f['accuracy'] * 100:.2f}%",
                        f"{diff:+.2f}" if backend != "fast" else "reference",
                        f"{gate['agreement'] * 100:.2f}%" if gate else "",
                        f"{gate['drop_points']:+.2f}" if gate else "",
                    ]
                )
                if backend != "fast":
                    ok = -diff <= ACCURACY_TARGET
                    checks.append(
                        f"{ckpt.get('model_name')} {backend}: test accuracy {diff:+.2f} points "
                        f"against float32 (target within {ACCURACY_TARGET}, "
                        f"{'met' if ok else 'NOT met'})"
                    )
            del model
            torch.set_num_threads(threads)
    return rows, checks


def int8_paths(run: str, threads: int, repeats: int, warmup: int) -> list[list[str]]:
    """onnxruntime quantize_static against PT2E + X86InductorQuantizer on ``run``'s
    model: images/s at batch 64 (validation images) and agreement with float32 on the
    whole validation split, both calibrated on the same training images."""
    import time
    import warnings

    from convzoo.bench import torch_threads
    from convzoo.infer import load_trained, measure_throughput, optimize
    from convzoo.lowp import calibration_batch, held_out, measure_gate, normalised_batches

    _, ckpt, model, _ = load_trained(run, device="cpu")
    held = held_out(ckpt)
    data = ckpt["data"]
    calibration = calibration_batch(held, data)
    # Whole batches of 64 only: the PT2E graph is exported for one batch size.
    n = len(held.val_labels) // 64 * 64
    val = normalised_batches(held.val_images[:n], held.val_labels[:n], data, "cpu", 64)
    x = next(iter(val))[0]
    rows = []
    with torch_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = {"eager fp32": (model, 0.0)}
        t0 = time.perf_counter()
        candidates["onnxruntime quantize_static (QDQ, per-channel)"] = (
            optimize(model, x, "int8", threads=threads, calibration=calibration),
            time.perf_counter() - t0,
        )
        try:
            t0 = time.perf_counter()
            compiled = _pt2e(model, x, calibration)
            candidates["PT2E X86InductorQuantizer + inductor"] = (
                compiled,
                time.perf_counter() - t0,
            )
        except Exception as exc:  # noqa: BLE001 - torchao missing or the path fails: say so
            rows.append(["PT2E X86InductorQuantizer + inductor", "failed", "", "", str(exc)[:80]])
        ref_speed = None
        for label, (runner, setup) in candidates.items():
            speed = measure_throughput(runner, x, repeats=repeats, warmup=warmup)
            ips = speed["images_per_second"]
            ref_speed = ref_speed or ips
            gate = measure_gate(model, runner, val) if runner is not model else None
            rows.append(
                [
                    label,
                    f"{ips:.1f}",
                    f"{ips / ref_speed:.2f}x",
                    f"{setup:.1f}",
                    (
                        f"agreement {gate['agreement'] * 100:.2f}%, drop "
                        f"{gate['drop_points']:+.2f} points"
                        if gate
                        else "reference"
                    ),
                ]
            )
    return rows


def _pt2e(model, x, calibration):
    """PT2E static int8 (torchao): export, X86InductorQuantizer, calibrate, convert,
    torch.compile with frozen weights. ResNet blocks call one ReLU module twice, which
    the quantizer's pattern matcher takes for one partition with two outputs: each call
    is given its own name first."""
    import torch
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = torch.export.export(model, (x,)).module()
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack and node.op == "call_function":
            key = list(stack)[-1]
            stack[key] = (f"{stack[key][0]}_{node.name}", stack[key][1])
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), 64):
            prepared(calibration[i : i + 64])
    converted = convert_pt2e(prepared)
    inductor_config.freezing = True
    compiled = torch.compile(converted)
    with torch.no_grad():
        compiled(x)

    def run(t):
        with torch.no_grad():
            return compiled(t)

    return run


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
    p.add_argument(
        "--runs",
        nargs="*",
        default=[],
        metavar="RUN_DIR",
        help="trained runs: test accuracy per backend",
    )
    p.add_argument("--int8-paths", default=None, metavar="RUN_DIR", help="onnxruntime vs PT2E int8")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput tables")
    args = p.parse_args()

    models = (
        tuple(args.models.split(",")) if args.models else QUICK_MODELS if args.quick else MODELS
    )
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    threads = args.threads or available_cores()
    settings = [s for s in SETTINGS if not (args.quick and s[4] == 1)]
    if args.no_throughput:
        settings = []
    precisions = cpu_precisions()
    print(describe_precisions(precisions), flush=True)

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
            for lowp in LOWP_TARGETS:
                speedups[(name, label, batch, lowp)] = by[lowp]["speedup"]
            agree = all(
                r["max_rel_error"] <= 1e-4 for r in result["rows"] if not r.get("approximate")
            )
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
                    f"{by['bf16']['images_per_second']:.1f}",
                    f"{by['bf16']['speedup']:.2f}x",
                    f"{by['int8']['images_per_second']:.1f}",
                    f"{by['int8']['speedup']:.2f}x",
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
        "bf16 img/s",
        "bf16 speed-up",
        "int8 img/s",
        "int8 speed-up",
        "exact outputs agree (1e-4)",
    ]
    checks = []
    for name in TARGET_MODELS:
        for label, target in TARGETS.items():
            got = speedups.get((name, label, 64))
            if got is not None:
                verdict = "met" if got >= target else "NOT met"
                checks.append(f"{name} {label} batch 64: {got:.2f}x (target {target}x, {verdict})")
    native = {"bf16": precisions["bf16_native"], "int8": precisions["int8_native"]}
    for name in LOWP_TARGET_MODELS:
        for lowp, target in LOWP_TARGETS.items():
            got = speedups.get((name, "28 px", 64, lowp))
            if got is None:
                continue
            if native[lowp]:
                verdict = "met" if got >= target else "NOT met"
            else:
                verdict = "no native instructions on this CPU: target does not apply"
            checks.append(
                f"{name} 28 px batch 64, {lowp} vs eager NCHW fp32: {got:.2f}x "
                f"(target {target}x, {verdict})"
            )

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

    accuracy: list[list[str]] = []
    if args.runs:
        accuracy, more = accuracy_rows(args.runs, threads)
        checks += more
        for r in accuracy:
            print(" | ".join(r), flush=True)
    paths: list[list[str]] = []
    if args.int8_paths:
        paths = int8_paths(args.int8_paths, threads, repeats, warmup)
        for r in paths:
            print(" | ".join(r), flush=True)

    print("\n".join(checks))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = (
        f"{threads} threads (torch and onnxruntime); median of {repeats} timed batches after "
        f'{warmup} warm-up; random input, random weights; "fast" = convzoo.infer.optimize '
        f"(BN folded, fused oneDNN convolutions, channels-last); bf16 = the same in bfloat16; "
        f"int8 = onnxruntime quantize_static (QDQ, per-channel), calibrated on random "
        f"images here (speed only). {describe_precisions(precisions)}. Load average at the "
        f"end: {load:.1f}.\n\n" + "\n".join(f"- {c}" for c in checks)
    )
    if not args.no_record:
        from _record import append_section

        if rows:
            append_section(
                "Inference throughput: eager NCHW, fast, onnxruntime, bf16, int8",
                header,
                rows,
                note,
            )
        if accuracy:
            append_section(
                "Test accuracy per inference backend (trained runs)",
                ["model", "run", "backend", "test accuracy", "vs float32 (points)",
                 "validation top-1 agreement", "validation drop (points)"],
                accuracy,
                f"{describe_precisions(precisions)}; load average {load:.1f}. "
                "bf16 and int8 measured after the accuracy gate on each run's validation "
                "split; int8 calibrated on 512 training images.\n\n"
                + "\n".join(f"- {c}" for c in checks if "test accuracy" in c),
            )  # fmt: skip
        if paths:
            append_section(
                "int8: onnxruntime quantize_static vs PT2E X86InductorQuantizer",
                ["path", "img/s (batch 64)", "vs eager fp32", "setup s", "validation split"],
                paths,
                f"Run {args.int8_paths}; {describe_precisions(precisions)}; {threads} "
                f"threads; median of {repeats} after {warmup} warm-up; load average "
                f"{load:.1f}. Both calibrated on the same 512 training images.",
            )
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
