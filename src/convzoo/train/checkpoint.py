"""The checkpoint of a training run: what it holds, how a run is put back from it.

The file-level work (atomic writes, ``torch.load(weights_only=True)``) is
:mod:`convzoo.artifacts`'; this module owns the *schema* of a run's checkpoint, a plain
dict in the spirit of nanoGPT's (model, optimizer, position, best validation score,
config):

    format, model_name, model_options        what convzoo.registry rebuilds the model from
    model, ema, ema_updates                  weights (state dicts)
    data                                     dataset, data_dir, classes, mean, std,
                                             image_size, resize, in_channels
    config                                   the resolved TrainConfig
    optimizer, scaler, scheduler, rng        optimizer and RNG states (rng_ranks: every rank's)
    epoch, batch, step, world_size           the position: ``batch`` batches into ``epoch``
    planned_steps, budget_plan               the run's length (and the time-budget plan)
    epoch_sums                               loss/accuracy sums of a partial epoch
    metrics, best_val_accuracy, best_epoch   the epochs so far
    train_seconds, convzoo_version, torch_version

:func:`run_state` builds it from a :class:`~convzoo.train.trainer.Trainer`,
:func:`restore_run_state` puts a trainer back, and :func:`load_latest_checkpoint`
finds the newest readable one of a run directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..artifacts import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    UnsafeCheckpointError,
    link_or_copy,
    load_checkpoint,
    save_checkpoint,
)
from ..errors import CheckpointError
from ..registry import check_state_dict
from .distributed import Processes, rank_seed, rank_zero_only
from .rng import rng_state, seed_everything, set_rng_state
from .schedule import Schedule

if TYPE_CHECKING:
    from .trainer import Trainer


@dataclasses.dataclass
class EpochSums:
    """Loss and accuracy sums of the epoch in progress, kept as tensors (no host sync)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def zero(cls, device: torch.device) -> EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        """Count a batch of ``n`` images with mean ``loss`` and ``correct`` right."""
        self.loss_sum += loss * n
        self.correct += correct
        self.seen += n

    def state(self) -> dict:
        return {
            "loss_sum": self.loss_sum.detach().cpu().clone(),
            "correct": self.correct.detach().cpu().clone(),
            "seen": self.seen,
            "seconds": self.seconds,
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> EpochSums:
        return cls(
            state["loss_sum"].to(device),
            state["correct"].to(device),
            int(state["seen"]),
            float(state["seconds"]),
        )

    def summed(self, procs: Processes) -> EpochSums:
        """The loss, correct and seen counts of every rank added up (this rank's seconds)."""
        if not procs.enabled:
            return self
        dev = self.loss_sum.device
        seen = torch.tensor(float(self.seen), dtype=torch.float64, device=dev)
        local = torch.stack([self.loss_sum.detach().double(), self.correct.detach().double(), seen])
        total = procs.all_reduce(local)
        return EpochSums(
            total[0].to(self.loss_sum.dtype),
            total[1].round().to(self.correct.dtype),
            int(round(float(total[2]))),
            self.seconds,
        )


def save_run(t: Trainer, sums: EpochSums | None = None, *, best: bool = False) -> None:
    """Write checkpoints/last.pt (keeping the previous one as last.prev.pt; best.pt too
    with ``best``), after checking that the weights are finite.

    Distributed runs: every rank calls this (the loss sums are added up and every
    rank's RNG state is collected); rank 0 writes. The weights are those of the
    unwrapped model, so the checkpoint is the same as a one-process run's.
    """
    t.guard.check_weights(t)
    rngs = None
    if t.procs.enabled:
        if sums is not None:
            sums = sums.summed(t.procs)
        rngs = t.procs.all_gather_object(rng_state())
    _write(t, sums, rngs, best)


@rank_zero_only
def _write(t: Trainer, sums: EpochSums | None, rngs: list | None, best: bool) -> None:
    ckdir = t.run_dir / CHECKPOINT_DIR
    last = ckdir / "last.pt"
    state = run_state(t, sums)
    if rngs is not None:
        state["rng_ranks"] = rngs  # rank r's RNG; "rng" is rank 0's
    if last.exists() and t.last_is_good:
        link_or_copy(last, ckdir / "last.prev.pt")
    save_checkpoint(state, last)
    t.last_is_good = True
    if best:
        link_or_copy(last, ckdir / "best.pt")


def run_state(t: Trainer, sums: EpochSums | None) -> dict[str, Any]:
    """The checkpoint dict of trainer ``t`` now (``sums``: a partial epoch's sums)."""
    cfg, data = t.cfg, t.data
    return {
        "format": CHECKPOINT_FORMAT,
        "model_name": cfg.model,
        "model_options": dict(t.model_options),
        "model": t.model.state_dict(),
        "ema": t.ema.module.state_dict() if t.ema is not None else None,
        "ema_updates": t.ema.updates if t.ema is not None else 0,
        "data": {
            "dataset": data.ds.name,
            # where the data was found, so that it is found again without $CONVZOO_DATA
            "data_dir": cfg.data_dir or str(data.ds.source),
            "classes": list(data.ds.classes),
            "mean": list(data.mean),
            "std": list(data.std),
            "image_size": list(data.stored_size),
            "resize": data.resize,
            "in_channels": data.ds.in_channels,
        },
        "config": cfg.to_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "scheduler": t.schedule.state_dict(),
        "rng": rng_state(),
        "epoch": t.epoch,
        "batch": t.batch,
        "step": t.step,
        "world_size": t.procs.world_size,
        "planned_steps": t.total_steps,
        "budget_plan": t.budget.state_dict() if t.budget is not None else None,
        "epoch_sums": sums.state() if sums is not None else None,
        "metrics": list(t.metrics),
        "best_val_accuracy": t.best_val,
        "best_epoch": t.best_epoch,
        "train_seconds": t.train_seconds,
        "convzoo_version": _version(),
        "torch_version": str(torch.__version__),
    }


def restore_run_state(t: Trainer, ckpt: dict) -> dict | None:
    """Put trainer ``t`` back where ``ckpt`` was taken; returns the partial epoch's sums
    (rank 0 of a distributed run carries them on; ``None`` elsewhere)."""
    check_state_dict(t.model, ckpt["model"], t.cfg.model)
    t.model.load_state_dict(ckpt["model"])
    if t.ema is not None:
        if ckpt.get("ema") is None:
            raise CheckpointError("the checkpoint has no EMA weights but the run uses EMA")
        t.ema.module.load_state_dict(ckpt["ema"])
        t.ema.updates = int(ckpt.get("ema_updates", 0))
    try:
        t.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"the optimizer state does not fit: {exc}") from None
    if t.scaler is not None and ckpt.get("scaler"):
        t.scaler.load_state_dict(ckpt["scaler"])
    t.schedule = Schedule.from_state_dict(ckpt["scheduler"])
    t.total_steps = t.schedule.total_steps
    t.epoch = int(ckpt["epoch"])
    t.batch = int(ckpt.get("batch", 0))
    t.step = int(ckpt["step"])
    t.metrics = list(ckpt.get("metrics") or [])
    t.best_val = ckpt.get("best_val_accuracy")
    t.best_epoch = ckpt.get("best_epoch")
    t.train_seconds = float(ckpt.get("train_seconds", 0.0))
    procs = t.procs
    saved_world = int(ckpt.get("world_size") or 1)
    rngs = ckpt.get("rng_ranks")
    if saved_world == procs.world_size and rngs and len(rngs) == procs.world_size:
        set_rng_state(rngs[procs.rank])  # an exact continuation
    elif procs.rank == 0:
        set_rng_state(ckpt["rng"])
    else:  # a rank the saved run did not have: a seed of its own, fixed by the step
        seed_everything(rank_seed(t.cfg.seed + t.step, procs.rank))
    check_position(t.epoch, t.batch, t.step, t.steps_per_epoch, t.total_steps)
    # The saved loss sums cover every rank's images: rank 0 carries them on.
    return ckpt.get("epoch_sums") if procs.is_main else None


def resume_world_note(t: Trainer) -> str:
    """' (a run of 2 processes, now 1)' when the number of processes changed."""
    saved = int(t.ckpt.get("world_size") or 1)
    if saved == t.procs.world_size:
        return ""
    return f" (a run of {saved} process{'es' if saved > 1 else ''}, now {t.procs.world_size})"


def check_position(epoch: int, batch: int, step: int, steps_per_epoch: int, total: int) -> None:
    """:class:`CheckpointError` unless (epoch, batch, step) is a position of a run of
    ``total`` steps at ``steps_per_epoch`` batches an epoch: inside an epoch, or at the
    end of one, including a last epoch cut short by the plan of a time budget."""
    if step == epoch * steps_per_epoch + batch:
        return
    last_epoch_cut_short = (
        batch == 0
        and step == total
        and (epoch - 1) * steps_per_epoch < step < epoch * steps_per_epoch
    )
    if last_epoch_cut_short:
        return
    raise CheckpointError(
        f"the checkpoint's position (epoch {epoch}, batch {batch}, step {step}) does not fit "
        f"{steps_per_epoch} batches an epoch: was the data or batch size changed?"
    )


def load_latest_checkpoint(
    run_dir: str | Path, warn: Callable[[str], None] | None = None
) -> tuple[dict, Path]:
    """checkpoints/last.pt of a run, or the newest good one if it is damaged.

    Unsafe files are never skipped over silently: they raise at once.
    """
    ckdir = Path(run_dir) / CHECKPOINT_DIR
    last = ckdir / "last.pt"
    problems = []
    try:
        return load_checkpoint(last), last
    except UnsafeCheckpointError:
        raise
    except CheckpointError as exc:
        problems.append(str(exc))
    good = []
    for name in ("last.prev.pt", "best.pt"):
        path = ckdir / name
        if not path.exists():
            continue
        try:
            ck = load_checkpoint(path)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        good.append((int(ck.get("step", -1)), path, ck))
    if not good:
        raise CheckpointError(
            f"cannot resume {run_dir}: no usable checkpoint ({'; '.join(problems)})"
        )
    step, path, ck = max(good, key=lambda t: t[0])
    if warn is not None:
        warn(f"{problems[0]}; falling back to {path} (epoch {ck.get('epoch')}, step {step})")
    return ck, path


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = [
    "EpochSums",
    "check_position",
    "load_latest_checkpoint",
    "restore_run_state",
    "resume_world_note",
    "run_state",
    "save_run",
]
