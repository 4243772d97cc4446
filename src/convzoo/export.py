"""Export a trained model to ONNX, TorchScript or safetensors.

Every format carries what is needed to use the model without convzoo's training
state: the class names, the normalisation (mean, std), the input size the model
expects, and (for safetensors, which holds only weights) the model name and options to
rebuild it with :func:`convzoo.get_model`.

Models are exported in eval mode: batch norm uses its running statistics and
GoogLeNet's auxiliary heads (Szegedy et al. 2015), used only for the training loss,
are left out of the graph. The ONNX file is checked against PyTorch with onnxruntime
before it is put in place; a file that does not match is never written.

``--int8`` (:func:`export_onnx_int8`) writes the model quantized to int8 by
:func:`convzoo.lowp.quantize_onnx` (calibrated on the run's training images), after
checking it on the run's validation split against the float32 model (the accuracy gate
of :mod:`convzoo.lowp`), and beside it a JSON file with the calibration and the measured
figures. It is approximate, so it is checked on accuracy, not to 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .artifacts import (
    CHECKPOINT_DIR,
    MODEL_META_KEYS,
    atomic_path,
    find_checkpoint,
    load_checkpoint,
    model_meta,
    read_safetensors_header,
    refuse_overwrite,
    write_model_safetensors,
)
from .errors import CheckpointError, ConfigError, ConvzooError
from .lowp import DEFAULT_MAX_DROP
from .onnx_io import exportable, onnx_export, quiet_exporters
from .registry import model_from_checkpoint, model_from_safetensors

__all__ = [
    "FORMATS",
    "EXTENSIONS",
    "ExportCheckError",
    "checkpoint_metadata",
    "export_checkpoint",
    "export_onnx",
    "export_onnx_int8",
    "export_safetensors",
    "export_torchscript",
    "load_safetensors",
    "read_onnx_metadata",
    "read_safetensors_metadata",
]

FORMATS = ("onnx", "torchscript", "safetensors")
# File name endings; a plain export is model-<checkpoint>.<ending> beside the run's files
# (model-best.onnx, model-last.safetensors), never the model.safetensors training wrote.
EXTENSIONS = {"onnx": "onnx", "torchscript": "torchscript.pt", "safetensors": "safetensors"}
METADATA_FORMAT = "convzoo-model/1"
TORCHSCRIPT_EXTRA = "convzoo.json"
# Tolerance of the onnxruntime check: |onnx - torch| <= ATOL + RTOL * |torch|.
RTOL = 1e-4
ATOL = 1e-4


class ExportCheckError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes (an internal failure)."""


# -- metadata ---------------------------------------------------------------------------


def checkpoint_metadata(ckpt: dict) -> dict:
    """What an exported model carries, from a checkpoint dict (see the checkpoint contract).

    Keys: format, model_name, model_options, classes, mean, std, in_channels,
    image_size (of the stored images), resize, input_size ([C, H, W] the model sees),
    dataset.
    """
    try:
        data = ckpt["data"]
        in_channels = int(data["in_channels"])
        image_size = [int(s) for s in data["image_size"]]
        resize = data.get("resize")
        size = [int(resize), int(resize)] if resize else image_size
        return {
            "format": METADATA_FORMAT,
            "model_name": str(ckpt["model_name"]),
            "model_options": dict(ckpt["model_options"]),
            "classes": [str(c) for c in data["classes"]],
            "mean": [float(m) for m in data["mean"]],
            "std": [float(s) for s in data["std"]],
            "in_channels": in_channels,
            "image_size": image_size,
            "resize": int(resize) if resize else None,
            "input_size": [in_channels, *size],
            "dataset": str(data.get("dataset")),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint lacks the model or data description ({exc})") from None


def _metadata_strings(metadata: dict) -> dict[str, str]:
    # ONNX metadata_props and safetensors metadata hold strings: lists and dicts as JSON.
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def _metadata_from_strings(strings: dict[str, str]) -> dict:
    out: dict = {}
    for key, value in strings.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out


# -- helpers ----------------------------------------------------------------------------


def _example(input_size, batch: int = 2) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, *input_size, generator=gen)


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


# -- ONNX -------------------------------------------------------------------------------


def _check_onnx(path: Path, model: nn.Module, batches: list[Tensor]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for x in batches:
        expected = _forward(model, x).float()
        got = torch.from_numpy(session.run(None, {name: x.numpy()})[0]).float()
        if got.shape != expected.shape:
            raise ExportCheckError(
                f"ONNX check failed: onnxruntime gave shape {tuple(got.shape)}, "
                f"PyTorch {tuple(expected.shape)}"
            )
        diff = (got - expected).abs()
        worst = max(worst, float(diff.max()))
        if not bool((diff <= ATOL + RTOL * expected.abs()).all()):
            raise ExportCheckError(
                f"ONNX check failed: onnxruntime differs from PyTorch by up to "
                f"{float(diff.max()):.3g} (tolerance {ATOL:g} + {RTOL:g}*|x|) on a batch "
                f"of {x.shape[0]}"
            )
    return worst


def export_onnx(
    model: nn.Module,
    path,
    *,
    input_size: tuple[int, int, int] | list[int],
    metadata: dict | None = None,
    check_input: Tensor | None = None,
) -> Path:
    """Export ``model`` (eval mode, CPU) to ONNX with a dynamic batch axis.

    The graph's input is ``input`` (N, C, H, W) of normalised float32 images and its
    output ``logits`` (N, num_classes). ``metadata`` is stored in the model's
    ``metadata_props`` (lists and dicts as JSON). Before the file is put in place it is
    run with onnxruntime on ``check_input`` (default: a random batch) and on a batch of
    another size, and must match PyTorch to 1e-4; otherwise :class:`ExportCheckError`.
    """
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConvzooError(
            "ONNX export needs onnx and onnxruntime: pip install 'convzoo[onnx]'"
        ) from None
    path = Path(path)
    input_size = tuple(int(s) for s in input_size)
    check = (
        check_input.detach().float().cpu() if check_input is not None else _example(input_size, 8)
    )
    batches = [check, check[:3] if check.shape[0] > 3 else _example(input_size, 5)]
    with exportable(model) as model, atomic_path(path) as tmp:
        onnx_export(model, _example(input_size, 2), tmp)
        proto = onnx.load(str(tmp))
        props = {"producer": "convzoo", **_metadata_strings(metadata or {})}
        onnx.helper.set_model_props(proto, props)
        proto.doc_string = "convzoo model: normalised (N, C, H, W) float32 in, logits out"
        onnx.save(proto, str(tmp))
        _check_onnx(tmp, model, batches)
    return path


def read_onnx_metadata(path) -> dict:
    """The metadata stored by :func:`export_onnx`, JSON values decoded."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return _metadata_from_strings({p.key: p.value for p in proto.metadata_props})


# -- TorchScript ------------------------------------------------------------------------


def export_torchscript(
    model: nn.Module,
    path,
    *,
    input_size: tuple[int, int, int] | list[int],
    metadata: dict | None = None,
) -> Path:
    """Trace ``model`` (eval mode, CPU) and save it; ``torch.jit.load`` reads it back.

    ``metadata`` travels as the extra file ``convzoo.json`` inside the archive
    (``torch.jit.load(path, _extra_files={"convzoo.json": ""})``).
    """
    path = Path(path)
    input_size = tuple(int(s) for s in input_size)
    with exportable(model) as model:
        with quiet_exporters():
            traced = torch.jit.trace(model, _example(input_size, 2), check_trace=False)
        other = _example(input_size, 3)
        # Without the profiling executor's optimisation passes the check runs in a
        # fraction of the time; the saved graph is the same.
        with torch.jit.optimized_execution(False):
            got = _forward(traced, other)
        if not torch.allclose(got, _forward(model, other), rtol=RTOL, atol=ATOL):
            raise ExportCheckError(
                "TorchScript check failed: the traced model differs from PyTorch"
            )
    extra = {TORCHSCRIPT_EXTRA: json.dumps(metadata or {})}
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files=extra)
    return path


# -- safetensors ------------------------------------------------------------------------


def export_safetensors(model: nn.Module, path, *, metadata: dict) -> Path:
    """Save ``model``'s state dict as safetensors with ``metadata`` to rebuild it, in the
    one layout of convzoo's safetensors files (:func:`convzoo.artifacts.write_model_safetensors`,
    keys :data:`convzoo.artifacts.MODEL_META_KEYS`; ``model_name`` and ``model_options``
    are required). See :func:`load_safetensors`.
    """
    return write_model_safetensors(path, model.state_dict(), model_meta(**metadata))


def read_safetensors_metadata(path) -> dict:
    """The convzoo metadata of a safetensors file; CheckpointError if it has none."""
    return read_safetensors_header(path)[0]


def load_safetensors(path) -> nn.Module:
    """Rebuild the model saved by :func:`export_safetensors`, weights loaded, in eval mode
    (shapes checked against the header before any tensor is read)."""
    return model_from_safetensors(path)[0]


# -- from a checkpoint ------------------------------------------------------------------


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run directory a checkpoint belongs to (its folder for a loose file)."""
    parent = checkpoint_path.parent
    return parent.parent if parent.name == CHECKPOINT_DIR else parent


def default_name(checkpoint_path: Path, fmt: str, int8: bool = False) -> str:
    """``model-<checkpoint>.<ext>``: says which weights it holds (model-best.onnx;
    model-best.int8.onnx for the int8 form)."""
    return f"model-{checkpoint_path.stem}.{'int8.' if int8 else ''}{EXTENSIONS[fmt]}"


def default_output(checkpoint_path: Path, fmt: str, int8: bool = False) -> Path:
    """``model-<checkpoint>.<ext>`` in the run directory of ``checkpoint_path``."""
    return run_dir_of(checkpoint_path) / default_name(checkpoint_path, fmt, int8)


def int8_sidecar(path: Path) -> Path:
    """The JSON file beside an int8 ONNX file: model-best.int8.onnx -> model-best.int8.json."""
    return path.with_suffix(".json")


def export_onnx_int8(
    model: nn.Module,
    ckpt: dict,
    path,
    *,
    metadata: dict,
    max_accuracy_drop: float = DEFAULT_MAX_DROP,
    data_dir=None,
    source: str | None = None,
) -> tuple[Path, Path]:
    """Write ``model`` (of the checkpoint dict ``ckpt``) to ``path`` as an int8 ONNX
    model and its description to :func:`int8_sidecar` (``path`` with ``.json``).

    Quantized by :func:`convzoo.lowp.quantize_onnx` on training images of the run,
    then run with onnxruntime over the run's validation split beside the float32
    model: :class:`~convzoo.lowp.AccuracyGateError` (and no file written) when it loses
    more than ``max_accuracy_drop`` points. The JSON holds the quantization settings,
    the calibration images, the measured figures and this CPU's int8 paths; the ONNX
    file's metadata holds ``metadata`` and the same figures.
    """
    try:
        import onnx
    except ImportError:
        raise ConvzooError(
            "ONNX export needs onnx and onnxruntime: pip install 'convzoo[onnx]'"
        ) from None
    import tempfile

    from .artifacts import to_json, write_json
    from .lowp import (
        calibration_batch,
        check_gate,
        cpu_precisions,
        held_out,
        measure_gate,
        normalised_batches,
        quantize_onnx,
    )
    from .onnx_io import OnnxRuntimeModel, ort_session

    path = Path(path)
    sidecar = int8_sidecar(path)
    data = ckpt["data"]
    held = held_out(ckpt, data_dir)
    calibration = calibration_batch(held, data)
    input_size = metadata["input_size"]
    with exportable(model) as model, tempfile.TemporaryDirectory(prefix="convzoo-int8-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        onnx_export(model, _example(input_size, 2), fp32)
        quantized = Path(tmp) / "model.int8.onnx"
        settings = quantize_onnx(fp32, quantized, calibration)
        runner = OnnxRuntimeModel(ort_session(quantized, 1), 1, backend="int8")
        val = normalised_batches(held.val_images, held.val_labels, data, "cpu", 256)
        gate = check_gate("int8", measure_gate(model, runner, val), max_accuracy_drop)
        del runner
        config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        description = {
            "format": "convzoo-int8/1",
            "model_file": path.name,
            "source_checkpoint": source,
            "model_name": metadata["model_name"],
            "quantization": settings,
            "calibration": {
                "images": settings["calibration_images"],
                "from": "the run's training split (a sample seeded by the run's seed "
                f"{config.get('seed', 0)}), never validation or test images",
            },
            "accuracy_gate": gate,
            "cpu": cpu_precisions(),
        }
        proto = onnx.load(str(quantized))
        props = {
            "producer": "convzoo",
            **_metadata_strings(metadata),
            "int8": to_json(description, indent=None),
        }
        onnx.helper.set_model_props(proto, props)
        proto.doc_string = "convzoo int8 model: normalised (N, C, H, W) float32 in, logits out"
        with atomic_path(path) as out:
            onnx.save(proto, str(out))
    write_json(sidecar, description)
    return path, sidecar


def _real_batch(ckpt: dict, n: int = 8) -> Tensor | None:
    """Up to ``n`` test images of the checkpoint's dataset, preprocessed; None if unavailable."""
    try:
        from .data.loader import Loader
        from .evaluate import load_training_data

        data = ckpt["data"]
        ds = load_training_data(data)
        loader = Loader(
            ds.test_images[:n],
            ds.test_labels[:n],
            batch_size=n,
            mean=data["mean"],
            std=data["std"],
            resize=data.get("resize"),
        )
        x, _ = next(iter(loader))
        return x.float().cpu()
    except Exception:  # noqa: BLE001 - no data here: the check falls back to random input
        return None


def export_checkpoint(
    target,
    fmt: str,
    out=None,
    *,
    which: str = "best",
    int8: bool = False,
    max_accuracy_drop: float = DEFAULT_MAX_DROP,
    data_dir=None,
) -> Path:
    """Export the model of a run directory or checkpoint file; returns the written path.

    ``out`` defaults to ``model-<checkpoint>.onnx`` / ``.torchscript.pt`` /
    ``.safetensors`` in the run directory (e.g. ``model-best.onnx``); an existing
    directory gets that name inside it. No file of the run (its checkpoints,
    ``config.json``, ``result.json``, ``metrics.jsonl``, ``model.safetensors``) is ever
    overwritten. The ONNX check runs on a batch of real test images when the dataset can
    be found, else on random input. ``int8`` (ONNX only): the int8 form, see
    :func:`export_onnx_int8` (default name ``model-<checkpoint>.int8.onnx``).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ConfigError(f"--int8 is an ONNX export; use --format onnx, not {fmt}")
    ckpt_path = Path(find_checkpoint(target, which))
    out = Path(out) if out is not None else default_output(ckpt_path, fmt, int8)
    if out.is_dir():
        out = out / default_name(ckpt_path, fmt, int8)
    if out.exists() and out.resolve() == ckpt_path.resolve():
        raise ConfigError(
            f"refusing to overwrite the input checkpoint {ckpt_path}; choose another --out"
        )
    refuse_overwrite(out, [run_dir_of(ckpt_path)], "--out")
    if int8:
        if int8_sidecar(out).resolve() == ckpt_path.resolve():
            raise ConfigError(f"refusing to overwrite {ckpt_path}; choose another --out")
        refuse_overwrite(int8_sidecar(out), [run_dir_of(ckpt_path)], "--out")
    ckpt = load_checkpoint(ckpt_path)
    metadata = checkpoint_metadata(ckpt)
    model = model_from_checkpoint(ckpt).cpu()
    if int8:
        return export_onnx_int8(
            model,
            ckpt,
            out,
            metadata=metadata,
            max_accuracy_drop=max_accuracy_drop,
            data_dir=data_dir,
            source=str(ckpt_path),
        )[0]
    if fmt == "onnx":
        return export_onnx(
            model,
            out,
            input_size=metadata["input_size"],
            metadata=metadata,
            check_input=_real_batch(ckpt),
        )
    if fmt == "torchscript":
        return export_torchscript(model, out, input_size=metadata["input_size"], metadata=metadata)
    meta = {k: metadata[k] for k in MODEL_META_KEYS if k in metadata}
    meta["ema"] = ckpt.get("ema") is not None
    return export_safetensors(model, out, metadata=meta)
