"""Export a trained model to ONNX, TorchScript or safetensors.

Every format carries what is needed to use the model without convzoo's training
state: the class names, the normalisation (mean, std), the input size the model
expects, and (for safetensors, which holds only weights) the model name and options to
rebuild it with :func:`convzoo.get_model`.

Models are exported in eval mode: batch norm uses its running statistics and
GoogLeNet's auxiliary heads (Szegedy et al. 2015), used only for the training loss,
are left out of the graph. The ONNX file is checked against PyTorch with onnxruntime
before it is put in place; a file that does not match is never written.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import CheckpointError, ConfigError, ConvzooError

__all__ = [
    "FORMATS",
    "DEFAULT_NAMES",
    "ExportCheckError",
    "checkpoint_metadata",
    "export_checkpoint",
    "export_onnx",
    "export_safetensors",
    "export_torchscript",
    "load_safetensors",
    "read_safetensors_metadata",
]

FORMATS = ("onnx", "torchscript", "safetensors")
DEFAULT_NAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "safetensors": "model.safetensors",
}
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


@contextlib.contextmanager
def _quiet():
    # The exporters warn about tracing Python conditions (input-size checks) and about
    # their own deprecations; none of it is the user's business.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _atomic_path(path: Path):
    """Yield a temporary path next to ``path``; rename it into place if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def _exportable(model: nn.Module):
    """``model`` in eval mode on the CPU for the block (a CPU copy if it lives elsewhere);
    the caller's model gets its modes back afterwards."""
    from .evaluate import eval_mode

    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).cpu()
    with eval_mode(model), torch.no_grad():
        yield model


def _example(input_size, batch: int = 2) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, *input_size, generator=gen)


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


# -- ONNX -------------------------------------------------------------------------------


def _onnx_export(model: nn.Module, example: Tensor, path: Path) -> None:
    kwargs = dict(
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    # The TorchScript-based exporter is an order of magnitude faster on these small
    # convolutional graphs; the torch.export-based one is the fallback.
    first_error: Exception | None = None
    with _quiet():
        try:
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=17, **kwargs
            )
            return
        except Exception as exc:  # noqa: BLE001 - any failure: try the other exporter
            first_error = exc
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                verbose=False,
                external_data=False,
                **kwargs,
            )
        except Exception as exc:
            raise RuntimeError(
                f"ONNX export failed with both exporters: {first_error}; then: {exc}"
            ) from exc


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
    with _exportable(model) as model, _atomic_path(path) as tmp:
        _onnx_export(model, _example(input_size, 2), tmp)
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
    with _exportable(model) as model:
        with _quiet():
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
    with _atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files=extra)
    return path


# -- safetensors ------------------------------------------------------------------------


def export_safetensors(model: nn.Module, path, *, metadata: dict) -> Path:
    """Save ``model``'s state dict as safetensors with ``metadata`` to rebuild it.

    ``metadata`` must hold ``model_name`` and ``model_options`` (the
    :func:`convzoo.get_model` arguments); it is stored as JSON under the key
    ``convzoo`` of the file's metadata, next to ``format: pt`` (the layout of the
    ``model.safetensors`` that ``convzoo train`` writes). See :func:`load_safetensors`.
    """
    from safetensors.torch import save_file

    for key in ("model_name", "model_options"):
        if key not in metadata:
            raise ValueError(f"safetensors metadata needs {key!r}")
    path = Path(path)
    # Cloned and contiguous: safetensors refuses tensors that share storage.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with _atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "convzoo": json.dumps(metadata)})
    return path


def read_safetensors_metadata(path) -> dict:
    """The convzoo metadata of a safetensors file; CheckpointError if it has none."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            strings = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        metadata = json.loads(strings["convzoo"])
    except (KeyError, TypeError, json.JSONDecodeError):
        metadata = None
    if (
        not isinstance(metadata, dict)
        or "model_name" not in metadata
        or not isinstance(metadata.get("model_options"), dict)
    ):
        raise CheckpointError(f"{path} has no convzoo model description in its metadata")
    return metadata


def load_safetensors(path) -> nn.Module:
    """Rebuild the model saved by :func:`export_safetensors`, weights loaded, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .train.checkpoint import model_from_weights

    metadata = read_safetensors_metadata(path)
    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        # built on the meta device and checked against the weights first (see there)
        return model_from_weights(metadata["model_name"], metadata["model_options"], weights)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


# -- from a checkpoint ------------------------------------------------------------------


def default_output(checkpoint_path: Path, fmt: str) -> Path:
    """``model.<ext>`` in the run directory of ``checkpoint_path``."""
    parent = checkpoint_path.parent
    run_dir = parent.parent if parent.name == "checkpoints" else parent
    return run_dir / DEFAULT_NAMES[fmt]


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


def export_checkpoint(target, fmt: str, out=None, *, which: str = "best") -> Path:
    """Export the model of a run directory or checkpoint file; returns the written path.

    ``out`` defaults to ``model.onnx`` / ``model.torchscript.pt`` / ``model.safetensors``
    in the run directory; an existing directory gets that name inside it. The input
    checkpoint is never overwritten. The ONNX check runs on a batch of real test images
    when the dataset can be found, else on random input.
    """
    from .train.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    ckpt_path = Path(find_checkpoint(target, which))
    out = Path(out) if out is not None else default_output(ckpt_path, fmt)
    if out.is_dir():
        out = out / DEFAULT_NAMES[fmt]
    if out.exists() and out.resolve() == ckpt_path.resolve():
        raise ConfigError(f"refusing to overwrite the input checkpoint {ckpt_path}")
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{ckpt_path} is not a convzoo checkpoint")
    metadata = checkpoint_metadata(ckpt)
    model = model_from_checkpoint(ckpt).cpu()
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
    return export_safetensors(model, out, metadata=metadata)
