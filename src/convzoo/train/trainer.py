"""The trainer: ``train(config) -> TrainResult``, one run read top to bottom.

A run: load the data and carve a validation split out of the training set, build the
model and optimizer, plan the steps (epochs, or a time budget), then the loop (fetch a
batch, forward, backward, step) with a validation pass after every epoch, and at the
end one evaluation of the final model on the test set and the run's files
(``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``model.safetensors``,
``result.json``). Plots and the report are the caller's
(:func:`convzoo.training.train_run`). Every side effect along the way is a callback
(:mod:`convzoo.train.callbacks`); the checkpoint's contents are
:mod:`convzoo.train.checkpoint`'s.

Resuming (``resume=RUN_DIR``) continues exactly from ``checkpoints/last.pt``: the data
order and augmentation depend only on (seed, epoch, batch), every RNG state is restored,
and validation runs in eval mode without touching the training RNG, so on the CPU with
``deterministic`` an interrupted-then-resumed run ends with the same weights, bit for
bit, as an uninterrupted one. A run stopped after its last step resumes into the final
evaluation and writing.

Under ``torchrun`` (see :mod:`convzoo.train.distributed`) every process runs this loop:
the model is wrapped in DistributedDataParallel, each rank trains on its share of every
global batch, evaluations are sharded and their counts summed, and only rank 0 writes
and prints (:func:`~convzoo.train.callbacks.rank_zero_only`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import io
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import (
    CONFIG_FILE,
    MODEL_FILE,
    RESULT_FILE,
    RunLock,
    link_or_copy,
    model_meta,
    save_checkpoint,
    write_json,
    write_model_safetensors,
)
from ..device import available_cores, busy_machine_warning, resolve_device, synchronize
from ..errors import ConfigError
from . import setup
from .budget import AGREE_EVERY, BudgetProbe, TimeBudget
from .callbacks import (
    Checkpointing,
    DivergenceGuard,
    MetricsFile,
    ProgressDisplay,
    RankAgreement,
    Signals,
    StepHook,
    TrainingDiverged,
    TrainingInterrupted,
    rank_zero_only,
)
from .checkpoint import EpochSums, load_latest_checkpoint, restore_run_state, run_state
from .config import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_ONECYCLE_WARMUP,
    DEFAULT_WEIGHT_DECAY,
    TrainConfig,
    check_config,
)
from .distributed import (
    Processes,
    SetupFailed,
    data_signature,
    global_batch_line,
    global_batch_size,
    rank_seed,
    session,
)
from .ema import EMA
from .optim import build_optimizer, training_loss
from .progress import Progress
from .rng import rng_state, seed_everything
from .schedule import Schedule, as_fraction

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "TrainingInterrupted", "train"]


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


def train(
    config: TrainConfig,
    *,
    resume: str | os.PathLike | None = None,
    command: str | None = None,
    started: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` as ``config`` says; return a :class:`TrainResult`.

    ``resume``: a run directory to continue from its ``checkpoints/last.pt`` (its saved
    config is used; see :data:`convzoo.train.config.RESUME_OPTIONS` for what may
    change). ``command``: the command line for result.json. ``started``: the
    ``time.perf_counter()`` the time budget counts from (default: now). ``on_step``:
    called with the global step after every optimizer step.

    Under ``torchrun`` every process calls this; the process group is joined here unless
    the caller joined one. Raises ConvzooError subclasses for bad options, data or
    checkpoints, TrainingInterrupted after SIGINT/SIGTERM (checkpoint saved), and
    TrainingDiverged when the loss or the weights are no longer finite.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train() needs a TrainConfig, got {type(config).__name__}")
    with session() as procs:
        trainer = Trainer(config, resume=resume, command=command, started=started, procs=procs)
        return trainer.run(on_step)


class Trainer:
    """One training run (see the module's docstring)."""

    def __init__(self, config, *, resume=None, command=None, started=None, procs=None) -> None:
        self.procs: Processes = procs if procs is not None else Processes()
        self.started = time.perf_counter() if started is None else started
        self.cfg: TrainConfig = copy.deepcopy(config)
        self.resume_dir = Path(resume) if resume is not None else None
        self.command = command
        self.ckpt: dict | None = None
        self.resumed_from: Path | None = None
        self.run_dir: Path | None = None
        self.lock: RunLock | None = None
        self.callbacks: list = []
        self.budget: TimeBudget | None = None
        self.last_is_good = True
        self.epoch = self.batch = self.step = 0
        self.metrics: list[dict] = []
        self.best_val: float | None = None
        self.best_epoch: int | None = None
        self.train_seconds = 0.0

    # ------------------------------------------------------------------ build

    def run(self, on_step: Callable[[int], None] | None = None) -> TrainResult:
        from ..registry import check_model_name

        procs = self.procs
        saved_torch = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        try:
            with Signals() as self.signals:

                def check() -> None:
                    check_config(self.cfg)
                    check_model_name(self.cfg.model)
                    if self.resume_dir is not None and procs.is_main:
                        self._load_resume()

                procs.agree(check)  # an error on any rank stops every rank
                if self.resume_dir is not None and procs.enabled:
                    # Only rank 0 reads the run directory; the others get its checkpoint.
                    ckpt, path = procs.broadcast_object((self.ckpt, self.resumed_from))
                    if not procs.is_main:
                        self.cfg = setup.resume_config(self.cfg, ckpt, path, self.resume_dir)
                        self.ckpt, self.resumed_from = ckpt, path
                if procs.is_main:
                    self.progress = Progress(0, quiet=self.cfg.quiet)
                else:  # only rank 0 prints
                    self.progress = Progress(0, quiet=True, stream=io.StringIO())
                return self._run(on_step)
        except BaseException as exc:
            for cb in self.callbacks:
                cb.on_exception(self, exc)
            raise
        finally:
            torch.set_num_threads(saved_torch[0])
            torch.use_deterministic_algorithms(saved_torch[1], warn_only=saved_torch[2])
            if self.lock is not None:
                self.lock.release()

    def _load_resume(self) -> None:
        setup.check_resume_dir(self.resume_dir)
        self.lock = RunLock(self.resume_dir).acquire()  # before anything is written
        ckpt, path = load_latest_checkpoint(self.resume_dir, warn=_warn)
        self.cfg = setup.resume_config(self.cfg, ckpt, path, self.resume_dir)
        self.ckpt, self.resumed_from = ckpt, path

    def _run(self, on_step) -> TrainResult:
        cfg, procs, log = self.cfg, self.procs, self.progress.info
        procs.agree(self._setup)  # an error on any rank stops every rank
        # The run directory is made once the run is known to be able to start.
        procs.agree(self._make_run_dir if procs.is_main else lambda: None)
        self._join()
        if cfg.recipe and self.ckpt is None:
            log(f"recipe: {cfg.recipe}")
        log(self.data.start_line)
        if procs.enabled:
            log(self.distributed_line)
        if self.device.type == "cpu" and not procs.enabled and not os.environ.get(NO_BUSY_CHECK):
            # (other ranks of a distributed run start at the same moment and would count)
            busy = busy_machine_warning(cfg.threads)
            if busy:
                self.progress.warn(busy)
        self.guard = DivergenceGuard(every=10 if self.device.type == "cpu" else 50)
        if cfg.time_budget is not None:
            self.budget = TimeBudget(
                cfg.time_budget, started=self.started, procs=procs, tta=cfg.tta,
                save_every=cfg.save_every_steps, say=log,
            )  # fmt: skip
        self.callbacks = [self.guard, self.signals, Checkpointing(cfg.save_every_steps)]
        self.callbacks += [MetricsFile(), ProgressDisplay()]
        self.callbacks += [StepHook(on_step)] if on_step is not None else []
        self.callbacks += [self.budget] if self.budget is not None else []
        if procs.enabled:
            self.callbacks.append(RankAgreement(AGREE_EVERY.get(self.device.type, 5)))
        self._plan()
        sums_state = None
        if self.ckpt is not None:
            sums_state = restore_run_state(self, self.ckpt)
            log(
                f"resuming {self.run_dir} from {self.resumed_from.name}: epoch {self.epoch + 1}, "
                f"batch {self.batch}, step {self.step}" + self._resume_world_note()
            )
        self._write_config()
        self.progress.epochs = self.planned_epochs
        if self.ckpt is None:
            self.save()  # a good checkpoint to fall back on from the start
        self.signals.check(self, "during set-up")
        self._loop(sums_state)
        return self._finish()

    def _setup(self) -> None:
        """Everything up to the optimizer that can fail on one rank alone (its data, its
        device, the run directory on rank 0); run under :meth:`Processes.agree`."""
        cfg, procs = self.cfg, self.procs
        setup.check_data_dir(cfg.data_dir)
        self.device = resolve_device(cfg.device, procs.local_rank if procs.enabled else None)
        cfg.device = self.device.type
        if cfg.threads is None:
            # the cores of a machine are shared by the processes running on it
            cores = max(1, available_cores() // procs.local_world_size)
            cfg.threads = 1 if cfg.deterministic else cores
        torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # On CUDA some kernels (e.g. adaptive pooling's backward) have no deterministic
            # form: warn there instead of refusing to train.
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(cfg.seed)  # the same on every rank: the same initial weights
        if procs.is_main and self.ckpt is None and cfg.out is not None:
            setup.check_new_run_dir(Path(cfg.out))
        warn = self.progress.warn
        self.data = data = setup.load_data(cfg, self.ckpt["data"] if self.ckpt else None, warn)
        saved_options = self.ckpt.get("model_options", {}) if self.ckpt else None
        self.model, self.model_options, self.sync_bn_layers = setup.build_model(
            cfg, data, self.device, procs, saved_options, warn
        )
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.forward_model: nn.Module = self.model
        if cfg.compile:
            self.forward_model = torch.compile(self.model)
        self.autocast_dtype, self.scaler = setup.mixed_precision(cfg, self.device)
        self.loaders = setup.build_loaders(cfg, data, self.device, procs)
        if cfg.lr is None:
            cfg.lr = DEFAULT_LR[cfg.optimizer]
        if cfg.weight_decay is None:
            cfg.weight_decay = DEFAULT_WEIGHT_DECAY[cfg.optimizer]
        self.optimizer = self._new_optimizer()
        self.steps_per_epoch = len(self.loaders.train)
        self.num_test = len(data.ds.test_labels)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"no training batches: {data.num_train} training images with batch size "
                f"{cfg.batch_size}"
                + (f" shared by {procs.world_size} processes" if procs.enabled else "")
            )

    def _new_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return build_optimizer(
            self.model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
            momentum=cfg.momentum, nesterov=cfg.nesterov,
        )  # fmt: skip

    def _make_run_dir(self) -> None:
        """Rank 0: the run directory, locked before its first byte is written."""
        cfg = self.cfg
        if cfg.out is None:
            cfg.out = setup.default_run_dir(cfg.model, self.data.ds.name, self.data.is_folder)
        self.run_dir = Path(cfg.out)
        if self.ckpt is None:
            setup.check_new_run_dir(self.run_dir)
            self.lock = RunLock(self.run_dir).acquire()
            setup.check_new_run_dir(self.run_dir)  # again: another run may have just ended
        self.ck_dir = setup.make_run_dir(self.run_dir)

    def _join(self) -> None:
        """Distributed runs: take rank 0's run directory, check that every rank found the
        same data, wrap the model in DistributedDataParallel, give each rank its own
        dropout RNG."""
        procs, cfg, data = self.procs, self.cfg, self.data
        if not procs.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel

        signature = data_signature(data.train_y, data.val_y, data.ds.test_labels, data.train_x)
        mine = (cfg.out, signature, data.num_train, data.num_val, self.num_test)
        every = procs.all_gather_object(mine)
        differ = [r for r, theirs in enumerate(every) if theirs[1:] != every[0][1:]]
        if differ:
            lines = ", ".join(
                f"rank {r}: {t[2]} training, {t[3]} validation, {t[4]} test images "
                f"(fingerprint {t[1]})"
                for r, t in enumerate(every)
                if r == 0 or r in differ
            )
            raise SetupFailed(
                f"the processes found different data ({lines}); every machine needs the same "
                "copy of the dataset (check --data-dir and $CONVZOO_DATA on each)",
                show=procs.is_main,
            )
        cfg.out = every[0][0]
        self.run_dir = Path(cfg.out)
        self.ck_dir = self.run_dir / "checkpoints"
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.forward_model = torch.compile(ddp) if cfg.compile else ddp
        if procs.rank > 0:  # dropout differs between ranks; rank 0 goes on as one process
            seed_everything(rank_seed(cfg.seed, procs.rank))
        threads = "1 thread" if cfg.threads == 1 else f"{cfg.threads} threads"
        self.distributed_line = (
            f"distributed: {procs.world_size} processes ({procs.backend}), "
            f"{global_batch_line(cfg.batch_size, procs.world_size)}, {threads} each"
            + (f", SyncBatchNorm in {self.sync_bn_layers} layers" if self.sync_bn_layers else "")
        )

    def _resume_world_note(self) -> str:
        saved = int(self.ckpt.get("world_size") or 1)
        if saved == self.procs.world_size:
            return ""
        now = self.procs.world_size
        return f" (a run of {saved} process{'es' if saved > 1 else ''}, now {now})"

    def _plan(self) -> None:
        """Total steps, and the schedule scaled to them."""
        cfg, spe = self.cfg, self.steps_per_epoch
        if self.ckpt is not None:
            total = int(self.ckpt["planned_steps"])
            if self.budget is not None:
                self.budget.load_state_dict(self.ckpt.get("budget_plan"))
        elif self.budget is not None:
            probe = BudgetProbe(self._probe_steps, self._probe_eval, self._probe_save)
            total = self.budget.measure_and_plan(
                probe, steps_per_epoch=spe, val_images=self.data.num_val, test_images=self.num_test
            )
            self.model.train()
        else:
            if cfg.epochs is None:
                cfg.epochs = DEFAULT_EPOCHS
            total = cfg.epochs * spe
        nominal_epochs = cfg.epochs if cfg.epochs is not None else total / spe
        if cfg.warmup is None:
            cfg.warmup = DEFAULT_ONECYCLE_WARMUP if cfg.schedule == "onecycle" else 0.0
        warm = as_fraction(cfg.warmup, nominal_epochs, "warm-up")
        milestones = [as_fraction(m, nominal_epochs, "milestone") for m in cfg.milestones]
        self.schedule = Schedule(cfg.schedule, total, warm, milestones, cfg.gamma)
        self.total_steps = total

    # ------------------------------------------------------------------ the loop

    def train_step(self, x, y, lr: float, global_n: int | None = None, *, optimizer=None, ema=None):
        """One optimizer step; returns (loss, correct) as tensors (no host sync).

        In a distributed run ``global_n`` is the size of the global batch: each rank's
        mean loss is weighted by its share of it, so that the gradient DDP averages is
        the gradient of the mean loss over the global batch even when the shares differ.
        """
        optimizer = self.optimizer if optimizer is None else optimizer
        ema = self.ema if ema is None else ema
        for g in optimizer.param_groups:
            g["lr"] = lr
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.forward_model(x)
            loss = training_loss(out, y, self.cfg.label_smoothing)
        objective = loss
        if self.procs.world_size > 1 and global_n:
            share = x.shape[0] * self.procs.world_size / global_n
            if share != 1.0:
                objective = loss * share
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(objective).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            objective.backward()
            optimizer.step()
        if ema is not None:
            ema.update(self.model)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        target = y.argmax(1) if y.ndim == 2 else y
        correct = (logits.detach().argmax(1) == target).sum()
        return loss.detach(), correct

    def _loop(self, sums_state: dict | None) -> None:
        cfg, spe = self.cfg, self.steps_per_epoch
        lr = cfg.lr * self.schedule.factor(max(self.step - 1, 0))
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        while self.step < self.total_steps or self.batch > 0:
            self.epoch_batches = min(spe, self.total_steps - self.epoch * spe)
            if sums_state is not None:
                self.sums, sums_state = EpochSums.from_state(sums_state, self.device), None
            else:
                self.sums = EpochSums.zero(self.device)
            self.restart_clock()
            if self.batch < self.epoch_batches:
                for x, y in self.loaders.train.epoch(self.epoch, start=self.batch):
                    lr = cfg.lr * self.schedule.factor(self.step)
                    n_global = global_batch_size(self.data.num_train, cfg.batch_size, self.batch)
                    loss, correct = self.train_step(x, y, lr, n_global)
                    self.sums.loss_sum += loss * x.shape[0]
                    self.sums.correct += correct
                    self.sums.seen += x.shape[0]
                    self.batch += 1
                    self.step += 1
                    self.tick()
                    for cb in self.callbacks:
                        cb.on_step_end(self)
                    self.epoch_batches = min(spe, self.total_steps - self.epoch * spe)
                    if self.batch >= self.epoch_batches:
                        break
            self.sync()
            self.tick()
            self._epoch_end(lr)
            self.signals.check(self, f"after epoch {self.epoch}")

    def _epoch_end(self, lr: float) -> None:
        from ..evaluate import evaluate

        sums = self._global_sums(self.sums)
        self.guard.check_loss(self, sums, summed=True)
        self.epoch_end_started = t0 = time.perf_counter()
        eval_model = self.ema.module if self.ema is not None else self.model
        val_loss = val_acc = None
        if self.loaders.val is not None:
            k = self.data.ds.num_classes
            res = evaluate(eval_model, self.loaders.val, k, distributed=self.procs.enabled)
            val_loss, val_acc = res.loss, res.accuracy
            for cb in self.callbacks:
                cb.on_validation_end(self, self.data.num_val, time.perf_counter() - t0)
        self.model.train()
        seen = max(sums.seen, 1)
        row = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": float(sums.loss_sum) / seen,
            "train_accuracy": float(sums.correct) / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": lr,
            "seconds": sums.seconds + time.perf_counter() - t0,
            "images_per_second": sums.seen / sums.seconds if sums.seconds > 0 else 0.0,
        }
        self.metrics.append(row)
        if val_acc is None or self.best_val is None or val_acc > self.best_val:
            self.best_val, self.best_epoch = val_acc, self.epoch + 1
        self.epoch += 1
        self.batch = 0
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)

    # ------------------------------------------------------------------ the end

    def _finish(self) -> TrainResult:
        from ..evaluate import evaluate, metrics_from_logits, predict_logits

        cfg, procs, k = self.cfg, self.procs, self.data.ds.num_classes
        self.guard.check_weights(self)
        final = self.ema.module if self.ema is not None else self.model
        final.eval()
        # Distributed runs: each rank tests its shard; the counts are added up.
        ds = self.data.ds
        test_loader = self.loaders.eval_loader(ds.test_images, ds.test_labels, procs)
        test_logits = None  # kept for the one-run report, so it needs no second test pass
        if procs.enabled:
            res = evaluate(final, test_loader, k, distributed=True)
        else:
            test_logits = predict_logits(final, test_loader)
            res = metrics_from_logits(*test_logits, k)
        res_tta = (
            evaluate(final, test_loader, k, tta=True, distributed=procs.enabled)
            if cfg.tta
            else None
        )
        self.signals.check(self, "in the final evaluation")
        out = TrainResult({}, self.run_dir, final, list(self.metrics), list(ds.classes),
                          res.confusion, test_logits, ds)  # fmt: skip
        if not procs.is_main:  # rank 0 writes the files
            out.result = {"rank": procs.rank, "steps": self.step,
                          "test_accuracy": res.accuracy, "run_dir": str(self.run_dir)}  # fmt: skip
            out.confusion = None
            return out
        self._write_model(final)
        if self.signals.received is not None:  # rank 0 alone: the others are done
            self.interrupt(self.signals.received, saved=True, where="while writing the results")
        out.result = self._result(res, res_tta)
        write_json(self.run_dir / RESULT_FILE, out.result)
        for cb in self.callbacks:
            cb.on_train_end(self, out.result)
        return out

    def _result(self, res, res_tta) -> dict[str, Any]:
        from ..anatomy import summary

        cfg, spe, data = self.cfg, self.steps_per_epoch, self.data
        final = self.ema.module if self.ema is not None else self.model
        s = summary(final, data.input_size)
        result = self._identity()
        result.update({
            "input_size": list(data.input_size),
            "num_classes": data.ds.num_classes,
            "params": s.total_params,
            "macs": s.total_macs,
            "epochs": round(self.step / spe, 4),
            "steps": self.step,
            "steps_per_epoch": spe,
            "train_seconds": round(self.train_seconds, 3),
            "wall_seconds": None,
            "test_accuracy": res.accuracy,
            "test_loss": res.loss,
            "test_per_class_accuracy": res.to_dict()["per_class_accuracy"],
            "best_val_accuracy": self.best_val,
            "best_epoch": self.best_epoch,
            "final_val_accuracy": self.metrics[-1]["val_accuracy"] if self.metrics else None,
            "train_images": data.num_train,
            "val_images": data.num_val,
            "test_images": res.num_samples,
            "ema": cfg.ema or None,
            "amp": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None,
        })  # fmt: skip
        result.update(self._provenance())
        if cfg.tta:
            result["test_accuracy_tta"] = res_tta.accuracy
            result["test_loss_tta"] = res_tta.loss
        if self.budget is not None:
            result.update(self.budget.result_fields(self.total_steps))
        result["wall_seconds"] = round(time.perf_counter() - self.started, 3)
        if self.budget is not None and self.budget.plan:
            result["actual_seconds"] = result["wall_seconds"]
            result["budget_used"] = round(result["wall_seconds"] / self.budget.seconds, 4)
        result["diverged"] = False
        return result

    def _identity(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "model": cfg.model,
            "dataset": self.data.ds.name,
            "small_input": bool(cfg.small_input),
            "width": cfg.width,
            "model_options": dict(self.model_options),
        }

    def _provenance(self) -> dict[str, Any]:
        from .. import __version__

        cfg = self.cfg
        return {
            "seed": cfg.seed,
            "deterministic": cfg.deterministic,
            "device": str(self.device),
            "threads": cfg.threads,
            "world_size": self.procs.world_size,
            "torch_version": str(torch.__version__),
            "convzoo_version": __version__,
            "command": self.command or f"convzoo.train({cfg.model!r})",
            "recipe": cfg.recipe,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "run_dir": str(self.run_dir),
            "resumed": self.resume_dir is not None,
        }

    def diverged_result(self, reason: str) -> dict[str, Any]:
        """result.json of a run stopped by divergence: no test figure, no model file."""
        return {
            **self._identity(),
            "diverged": True,
            "reason": reason,
            "epochs": round(self.step / self.steps_per_epoch, 4),
            "steps": self.step,
            "test_accuracy": None,
            "best_val_accuracy": self.best_val,
            "best_epoch": self.best_epoch,
            "lr": self.cfg.lr,
            **self._provenance(),
        }

    # ------------------------------------------------------------------ services to callbacks

    def tick(self) -> None:
        """Count the time since the last tick as training time."""
        now = time.perf_counter()
        dt = now - self._clock
        self._clock = now
        self.sums.seconds += dt
        self.train_seconds += dt

    def restart_clock(self) -> None:
        self._clock = time.perf_counter()

    def sync(self) -> None:
        synchronize(self.device)

    @property
    def planned_epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    def set_total_steps(self, total: int) -> None:
        self.total_steps = total
        self.schedule.total_steps = max(total, 1)
        self.progress.epochs = self.planned_epochs

    def save(self, sums: EpochSums | None = None, *, best: bool = False) -> None:
        """Write checkpoints/last.pt (keeping the previous one as last.prev.pt), after
        checking that the weights are finite.

        Distributed runs: every rank calls this (the loss sums are added up and every
        rank's RNG state is collected); rank 0 writes. The weights are those of the
        unwrapped model, so the checkpoint is the same as a one-process run's.
        """
        self.guard.check_weights(self)
        rngs = None
        if self.procs.enabled:
            if sums is not None:
                sums = self._global_sums(sums)
            rngs = self.procs.all_gather_object(rng_state())
        self._write_checkpoint(sums, rngs, best)

    @rank_zero_only
    def _write_checkpoint(self, sums, rngs, best: bool) -> None:
        last = self.ck_dir / "last.pt"
        state = run_state(self, sums)
        if rngs is not None:
            state["rng_ranks"] = rngs  # rank r's RNG; "rng" is rank 0's
        if last.exists() and self.last_is_good:
            link_or_copy(last, self.ck_dir / "last.prev.pt")
        save_checkpoint(state, last)
        self.last_is_good = True
        if best:
            link_or_copy(last, self.ck_dir / "best.pt")

    @rank_zero_only
    def _write_config(self) -> None:
        write_json(self.run_dir / CONFIG_FILE, self.cfg.to_dict())

    @rank_zero_only
    def _write_model(self, final: nn.Module) -> None:
        data = self.data
        meta = model_meta(
            model_name=self.cfg.model, model_options=self.model_options,
            classes=list(data.ds.classes), mean=list(data.mean), std=list(data.std),
            image_size=list(data.stored_size), resize=data.resize,
            in_channels=data.ds.in_channels, dataset=data.ds.name, ema=self.ema is not None,
        )  # fmt: skip
        write_model_safetensors(self.run_dir / MODEL_FILE, final.state_dict(), meta)

    def interrupt(self, signum: int, *, saved: bool, where: str | None = None) -> None:
        """Stop after a signal: save first unless ``saved``, then raise."""
        if not saved:
            self.guard.check_loss(self, self.sums)
            self.save(self.sums)
        where = where or f"at epoch {self.epoch + 1}"
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name} received: stopped {where}, step {self.step}; "
            f"checkpoint saved to {self.ck_dir / 'last.pt'}. Resume with: convzoo train "
            f"{self.cfg.model} --resume {self.run_dir}",
            signum,
            self.run_dir,
        )

    def agree_on_stop(self) -> int | None:
        """Distributed runs: a stop signal received by any rank, and rank 0's planned
        steps, made known to every rank (one small all-reduce)."""
        mine = torch.tensor(
            [self.signals.received or 0, self.total_steps if self.procs.is_main else 0],
            dtype=torch.int64,
        )
        signum, total = (int(v) for v in self.procs.all_reduce(mine, "max"))
        if total != self.total_steps:
            self.set_total_steps(total)
        return signum or None

    def _global_sums(self, sums: EpochSums) -> EpochSums:
        """The loss, correct and seen counts of every rank added up (rank 0's seconds)."""
        if not self.procs.enabled:
            return sums
        dev = sums.loss_sum.device
        local = torch.stack([sums.loss_sum.detach().double(), sums.correct.detach().double(),
                             torch.tensor(float(sums.seen), dtype=torch.float64, device=dev)])  # fmt: skip
        total = self.procs.all_reduce(local)
        return EpochSums(total[0].to(sums.loss_sum.dtype), total[1].round().to(sums.correct.dtype),
                         int(round(float(total[2]))), sums.seconds)  # fmt: skip

    # ------------------------------------------------------------------ budget probes

    def _probe_steps(self) -> Iterator[float]:
        """Steps on the real model and data for the time budget; on close the weights,
        optimizer, EMA and RNG are as before (the probe is not part of the run)."""
        model_state = copy.deepcopy(self.model.state_dict())
        rng = rng_state()
        optimizer = self._new_optimizer()
        ema = EMA(self.model, self.cfg.ema) if self.ema is not None else None
        scaler_state = self.scaler.state_dict() if self.scaler is not None else None
        lr = self.cfg.lr / 25
        try:
            for epoch in range(1000):
                for b, (x, y) in enumerate(self.loaders.train.epoch(epoch)):
                    t0 = time.perf_counter()
                    n_global = global_batch_size(self.data.num_train, self.cfg.batch_size, b)
                    self.train_step(x, y, lr, n_global, optimizer=optimizer, ema=ema)
                    self.sync()
                    yield time.perf_counter() - t0
        finally:
            from .rng import set_rng_state

            self.model.load_state_dict(model_state)
            if scaler_state is not None:
                self.scaler.load_state_dict(scaler_state)
            set_rng_state(rng)

    def _probe_eval(self) -> tuple[int, float]:
        """Evaluation speed on a few training images (the test set is used once)."""
        from ..data.loader import Loader
        from ..evaluate import evaluate

        n = min(self.data.num_train, self.loaders.eval_batch)
        probe = Loader(self.data.train_x[:n], self.data.train_y[:n],
                       batch_size=self.loaders.eval_batch, **self.loaders.common)  # fmt: skip
        evaluate(self.model, probe, self.data.ds.num_classes)
        t0 = time.perf_counter()
        evaluate(self.model, probe, self.data.ds.num_classes)
        self.sync()
        return n, time.perf_counter() - t0

    def _probe_save(self) -> float:
        """Seconds to write a checkpoint (about the model's size twice, and the EMA)."""
        t0 = time.perf_counter()
        path = self.ck_dir / ".probe.pt"
        weights = self.model.state_dict()
        ema = self.ema.module.state_dict() if self.ema is not None else None
        save_checkpoint({"model": weights, "optimizer": weights, "ema": ema}, path)
        path.unlink()
        return time.perf_counter() - t0


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


# Set (to anything) to skip the busy-machine check at start-up (tests, scripted runs).
NO_BUSY_CHECK = "CONVZOO_NO_BUSY_CHECK"
