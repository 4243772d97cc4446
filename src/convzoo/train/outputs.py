"""The files a run writes besides its checkpoints: ``config.json``,
``model.safetensors`` and ``result.json`` (``metrics.jsonl`` is
:class:`~convzoo.train.callbacks.MetricsFile`'s). Rank 0 only.

``result.json`` keys: the run's identity (model, dataset, small_input, width,
model_options), its size (input_size, num_classes, params, macs), its length (epochs,
steps, steps_per_epoch, train_seconds, wall_seconds), its figures (test_accuracy,
test_loss, test_per_class_accuracy, best_val_accuracy, best_epoch, final_val_accuracy,
train/val/test_images, and test_accuracy_tta, test_loss_tta with ``--tta``), its
options (ema, amp), the time budget's plan (time_budget, planned_steps,
planned_seconds, final_planned_steps, replans, actual_seconds, budget_used), provenance
(seed, deterministic, device, threads, world_size, torch_version, convzoo_version,
command, recipe, date, run_dir, resumed) and ``diverged``. A run stopped by divergence
writes a short result.json with ``"diverged": true``, its ``reason`` and no test figure.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..artifacts import CONFIG_FILE, MODEL_FILE, model_meta, write_json, write_model_safetensors
from .distributed import rank_zero_only

if TYPE_CHECKING:
    from .trainer import Trainer


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: result.json's contents and what the caller may
    still want from memory (the report and plots are written by the caller)."""

    result: dict[str, Any]  # result.json (rank 0); other ranks: rank, steps, test_accuracy
    run_dir: Path
    model: nn.Module | None  # the final model (EMA weights when used), eval mode
    metrics: list[dict]  # the metrics.jsonl rows
    classes: list[str]
    confusion: list[list[int]] | None  # test-set confusion matrix
    test_logits: tuple[torch.Tensor, torch.Tensor] | None  # (logits, labels); None if distributed
    dataset: Any  # the loaded dataset (the report shows its images)


@rank_zero_only
def write_config(t: Trainer) -> None:
    write_json(t.run_dir / CONFIG_FILE, t.cfg.to_dict())


@rank_zero_only
def write_model(t: Trainer, final: nn.Module) -> None:
    """model.safetensors: the evaluated weights with what inference needs around them."""
    data = t.data
    meta = model_meta(
        model_name=t.cfg.model,
        model_options=t.model_options,
        classes=list(data.ds.classes),
        mean=list(data.mean),
        std=list(data.std),
        image_size=list(data.stored_size),
        resize=data.resize,
        in_channels=data.ds.in_channels,
        dataset=data.ds.name,
        ema=t.ema is not None,
    )
    write_model_safetensors(t.run_dir / MODEL_FILE, final.state_dict(), meta)


def result(t: Trainer, final: nn.Module, res, res_tta) -> dict[str, Any]:
    """result.json of a finished run (``res``: the test evaluation)."""
    from ..anatomy import summary

    cfg, spe, data = t.cfg, t.steps_per_epoch, t.data
    s = summary(final, data.input_size)
    out = identity(t)
    out.update(
        {
            "input_size": list(data.input_size),
            "num_classes": data.ds.num_classes,
            "params": s.total_params,
            "macs": s.total_macs,
            "epochs": round(t.step / spe, 4),
            "steps": t.step,
            "steps_per_epoch": spe,
            "train_seconds": round(t.train_seconds, 3),
            "wall_seconds": None,
            "test_accuracy": res.accuracy,
            "test_loss": res.loss,
            "test_per_class_accuracy": res.to_dict()["per_class_accuracy"],
            "best_val_accuracy": t.best_val,
            "best_epoch": t.best_epoch,
            "final_val_accuracy": t.metrics[-1]["val_accuracy"] if t.metrics else None,
            "train_images": data.num_train,
            "val_images": data.num_val,
            "test_images": res.num_samples,
            "ema": cfg.ema or None,
            "amp": str(t.autocast_dtype).replace("torch.", "") if t.autocast_dtype else None,
        }
    )
    out.update(provenance(t))
    if cfg.tta:
        out["test_accuracy_tta"] = res_tta.accuracy
        out["test_loss_tta"] = res_tta.loss
    if t.budget is not None:
        out.update(t.budget.result_fields(t.total_steps))
    out["wall_seconds"] = round(time.perf_counter() - t.started, 3)
    if t.budget is not None and t.budget.plan:
        out["actual_seconds"] = out["wall_seconds"]
        out["budget_used"] = round(out["wall_seconds"] / t.budget.seconds, 4)
    out["diverged"] = False
    return out


def untested_result(t: Trainer, final: nn.Module, res, res_tta) -> dict[str, Any]:
    """result.json of a run that never read the test split (``res``: the final model on
    the validation split): no test figure; ``final_val_accuracy`` is the final model's,
    and ``final_val_accuracy_tta`` with ``tta``."""
    out = result(t, final, res, res_tta)
    for key in ("test_loss", "test_per_class_accuracy", "test_accuracy_tta", "test_loss_tta"):
        out.pop(key, None)
    out["test_accuracy"] = None
    out["test_images"] = 0
    out["final_val_accuracy"] = res.accuracy
    if res_tta is not None:
        out["final_val_accuracy_tta"] = res_tta.accuracy
    out["tested"] = False
    return out


def diverged_result(t: Trainer, reason: str) -> dict[str, Any]:
    """result.json of a run stopped by divergence: no test figure, no model file."""
    return {
        **identity(t),
        "diverged": True,
        "reason": reason,
        "epochs": round(t.step / t.steps_per_epoch, 4),
        "steps": t.step,
        "test_accuracy": None,
        "best_val_accuracy": t.best_val,
        "best_epoch": t.best_epoch,
        "lr": t.cfg.lr,
        **provenance(t),
    }


def identity(t: Trainer) -> dict[str, Any]:
    cfg = t.cfg
    return {
        "model": cfg.model,
        "dataset": t.data.ds.name,
        "small_input": bool(cfg.small_input),
        "width": cfg.width,
        "model_options": dict(t.model_options),
    }


def provenance(t: Trainer) -> dict[str, Any]:
    from .. import __version__

    cfg = t.cfg
    return {
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "device": str(t.device),
        "threads": cfg.threads,
        "world_size": t.procs.world_size,
        "torch_version": str(torch.__version__),
        "convzoo_version": __version__,
        "command": t.command or f"convzoo.train({cfg.model!r})",
        "recipe": cfg.recipe,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(t.run_dir),
        "resumed": t.resume_dir is not None,
    }
