"""ONNX export of a model and onnxruntime sessions, shared by :mod:`convzoo.export`
(files), :mod:`convzoo.lowp` (the int8 backend) and :mod:`convzoo.infer` (the
onnxruntime backend).

Models are exported in eval mode on the CPU: batch norm uses its running statistics
and GoogLeNet's auxiliary heads (Szegedy et al. 2015), used only for the training
loss, are left out of the graph.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConvzooError
from .evaluate import eval_mode

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the exporters' warnings for the block: they warn about tracing Python
    conditions (input-size checks) and about their own deprecations, none of it the
    user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def exportable(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode on the CPU for the block (a CPU copy if it lives elsewhere);
    the caller's model gets its modes back afterwards."""
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).cpu()
    with eval_mode(model), torch.no_grad():
        yield model


def onnx_export(model: nn.Module, example: Tensor, path: str | Path) -> None:
    """Write ``model`` (already :func:`exportable`) to ``path`` as ONNX with a dynamic
    batch axis: input ``input`` (N, C, H, W), output ``logits`` (N, K).

    The TorchScript-based exporter is an order of magnitude faster on these small
    convolutional graphs; the torch.export-based one is the fallback.
    """
    kwargs = dict(
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )
    first_error: Exception | None = None
    with quiet_exporters():
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


def ort_session(path: str | Path, threads: int) -> Any:
    """An onnxruntime CPU session of the ONNX file ``path`` with ``threads`` intra-op
    threads, every graph optimisation on, run sequentially, warnings silenced."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConvzooError(
            "this backend needs onnx and onnxruntime: pip install 'convzoo[onnx]'"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel(nn.Module):
    """An onnxruntime CPU session behind a module's interface: a float (N, C, H, W)
    torch tensor in, logits as a torch tensor out (on the input's device)."""

    def __init__(self, session: Any, threads: int, backend: str = "onnxruntime"):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.threads = threads
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"intra_op_num_threads={self.threads}"

    def __deepcopy__(self, memo):
        raise TypeError("an onnxruntime session cannot be copied; call optimize() again")
