"""Evaluation: accuracy, loss, per-class accuracy, confusion matrix, test-time augmentation.

Everything is computed on whole batches and then on the whole set of logits at once:
there is no per-sample Python. The model is switched to eval mode for the pass (so
GoogLeNet's auxiliary heads are off and batch norm uses its running statistics) and
every submodule's mode is restored afterwards.

In a distributed run (``evaluate(..., distributed=True)`` inside a torch.distributed
process group) each process evaluates its own disjoint shard of the set and the counts
(the confusion matrix, the summed loss, the number of images) are summed over the
processes, so every process gets the figures of the whole set, each image counted once.

Test-time augmentation (``tta=True``) averages the softmax of each image and of its
horizontal mirror, the cheapest of the multi-view evaluations of Krizhevsky et al. (2012)
and Szegedy et al. (2015), who averaged 10 and 144 crops respectively; here the two
views are the full image and its flip, with no cropping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DataError

__all__ = [
    "EvalResult",
    "eval_mode",
    "evaluate",
    "load_training_data",
    "metrics_from_logits",
    "predict_logits",
]


@dataclass
class EvalResult:
    """The figures of one evaluation pass.

    ``accuracy`` is a fraction in [0, 1]; ``per_class_accuracy[k]`` is the fraction of
    class ``k``'s images predicted as ``k`` (NaN for a class with no images);
    ``confusion[t][p]`` counts images of true class ``t`` predicted as ``p``.
    """

    accuracy: float
    loss: float
    per_class_accuracy: list[float]
    confusion: list[list[int]]
    num_samples: int

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN per-class accuracies become None)."""
        d = asdict(self)
        d["per_class_accuracy"] = [None if math.isnan(a) else a for a in self.per_class_accuracy]
        return d


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every submodule's own mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _logits_of(output) -> Tensor:
    # A model that still returns (logits, aux...) despite eval mode: keep the main head.
    return output[0] if isinstance(output, (tuple, list)) else output


def _hard_labels(y: Tensor) -> Tensor:
    # Soft (N, K) targets (mixup/cutmix) are reduced to their largest class.
    return y.argmax(dim=1) if y.is_floating_point() and y.dim() == 2 else y.long()


def predict_logits(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], *, tta: bool = False
) -> tuple[Tensor, Tensor]:
    """Run ``model`` over every batch of ``loader``.

    Returns ``(logits, labels)`` on the CPU: float32 (N, K) and int64 (N,). With ``tta``
    the "logits" are the log of the averaged softmax of the image and its horizontal
    flip, so that ``softmax`` of them is the averaged probability and cross-entropy on
    them is the loss of the averaged prediction.
    """
    outs: list[Tensor] = []
    labels: list[Tensor] = []
    for logits, y in _batch_logits(model, loader, tta):
        outs.append(logits)
        labels.append(y)
    if not outs:
        raise DataError("nothing to evaluate: the data loader yielded no batches")
    return torch.cat(outs).cpu(), torch.cat(labels).cpu()


def _batch_logits(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], tta: bool
) -> Iterator[tuple[Tensor, Tensor]]:
    """(logits float32 (N, K), hard labels (N,)) of each batch, on the loader's device."""
    with eval_mode(model), torch.inference_mode():
        for x, y in loader:
            logits = _logits_of(model(x)).float()  # (N, K)
            if tta:
                flipped = _logits_of(model(torch.flip(x, dims=(-1,)))).float()  # (N, K)
                probs = (logits.softmax(dim=1) + flipped.softmax(dim=1)) / 2
                logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
            yield logits, _hard_labels(y)


def metrics_from_logits(logits: Tensor, labels: Tensor, num_classes: int) -> EvalResult:
    """Accuracy, mean cross-entropy, per-class accuracy and confusion matrix of a set of logits."""
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"expected logits of shape (N, {num_classes}), got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{logits.shape[0]} logits but {labels.numel()} labels")
    n = labels.numel()
    if n == 0:
        raise DataError("nothing to evaluate: no samples")
    labels = labels.long()
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DataError(
            f"labels must lie in [0, {num_classes}), got values from "
            f"{int(labels.min())} to {int(labels.max())}"
        )
    logits = logits.float()
    preds = logits.argmax(dim=1)
    confusion = torch.bincount(labels * num_classes + preds, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)  # [true, predicted]
    return _result(confusion, float(F.cross_entropy(logits, labels)), n)


def _result(confusion: Tensor, loss: float, n: int) -> EvalResult:
    """An EvalResult from a (K, K) confusion matrix [true, predicted] and the mean loss."""
    confusion = confusion.long().cpu()
    support = confusion.sum(dim=1)
    correct = confusion.diagonal()
    per_class = torch.where(
        support > 0, correct.double() / support.clamp_min(1).double(), float("nan")
    )
    return EvalResult(
        accuracy=float(correct.sum()) / n,
        loss=loss,
        per_class_accuracy=[float(a) for a in per_class],
        confusion=confusion.tolist(),
        num_samples=n,
    )


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    tta: bool = False,
    distributed: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on every batch of ``loader`` (see :func:`predict_logits`).

    With ``distributed`` (and a torch.distributed group of more than one process), the
    loader holds this process's shard of the set: the shards must be disjoint and cover
    the set (some may be empty). Every process must call this; each gets the figures of
    the whole set. The loss is then summed in float64, so it may differ from a
    one-process evaluation in the last digits; the counts are exact.
    """
    if distributed and _group_size() > 1:
        return _evaluate_shards(model, loader, num_classes, tta)
    logits, labels = predict_logits(model, loader, tta=tta)
    return metrics_from_logits(logits, labels, num_classes)


def _group_size() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _evaluate_shards(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], num_classes: int, tta: bool
) -> EvalResult:
    """This process's counts, summed over the group: [confusion (K*K), loss sum, n, bad]."""
    import torch.distributed as dist

    k = num_classes
    counts = torch.zeros(k * k + 3, dtype=torch.float64)
    for logits, labels in _batch_logits(model, loader, tta):
        labels = labels.long()
        bad = (labels < 0) | (labels >= k)
        if bool(bad.any()):  # reported on every process below, instead of a hang
            counts[-1] += float(bad.sum())
            continue
        cells = torch.bincount(labels * k + logits.argmax(dim=1), minlength=k * k)
        counts[: k * k] += cells.cpu().double()
        counts[k * k] += float(F.cross_entropy(logits, labels, reduction="sum").double())
        counts[k * k + 1] += labels.numel()
    backend = str(dist.get_backend())
    if "gloo" in backend or backend.startswith("cpu"):
        dist.all_reduce(counts)
    else:  # NCCL alone: collectives on this process's GPU
        on_gpu = counts.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu)
        counts = on_gpu.cpu()
    if counts[-1] > 0:
        raise DataError(f"{int(counts[-1])} labels outside [0, {k}) in the evaluation set")
    n = int(counts[k * k + 1])
    if n == 0:
        raise DataError("nothing to evaluate: no process had any samples")
    confusion = counts[: k * k].round().long().reshape(k, k)  # [true, predicted]
    return _result(confusion, float(counts[k * k]) / n, n)


def load_training_data(data: dict, data_dir=None):
    """The dataset a checkpoint was trained on, from its ``data`` entry.

    ``data_dir`` overrides the directory training used; when it is not given and the
    stored one is gone, a standard dataset is searched for in the usual places. Raises
    DataError when the data found does not match what the model was trained on
    (classes, channels).
    """
    from .data.datasets import DATASET_NAMES, load_dataset

    name = str(data["dataset"])
    h, w = (int(s) for s in data["image_size"])
    # Image folders: resized to the stored size (square), or read at their own size.
    size = None if name in DATASET_NAMES or h != w else h
    stored = data.get("data_dir")
    tries = [data_dir] if data_dir else [stored]
    if not data_dir and stored and name in DATASET_NAMES:
        tries.append(None)
    for i, where in enumerate(tries):
        try:
            ds = load_dataset(name, where, image_size=size)
            break
        except DataError:
            if i == len(tries) - 1:
                raise
    classes = [str(c) for c in data["classes"]]
    if list(ds.classes) != classes:
        raise DataError(
            f"the data found at {ds.source} has classes {', '.join(ds.classes[:4])}, ... "
            f"but the model was trained on {', '.join(classes[:4])}, ..."
        )
    if ds.in_channels != int(data["in_channels"]) or tuple(ds.image_size) != (h, w):
        raise DataError(
            f"the images at {ds.source} are {ds.in_channels}x{ds.image_size[0]}x"
            f"{ds.image_size[1]}, the model was trained on {data['in_channels']}x{h}x{w}"
        )
    return ds
