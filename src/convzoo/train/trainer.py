"""The trainer: ``train(config) -> TrainResult``, one run read top to bottom.

Build (data split, model, optimizer, the plan of steps), then the loop (fetch a batch,
forward, backward, step) with a validation pass after every epoch, then one test of the
final model and the run's files. Every side effect on the way is a callback
(:mod:`.callbacks`); a checkpoint's contents are :mod:`.checkpoint`'s, the other files
:mod:`.outputs`'; plots and the report are the caller's (:mod:`convzoo.training`).

Resuming continues exactly from ``checkpoints/last.pt``: data order and augmentation
depend only on (seed, epoch, batch) and every RNG state is restored, so on the CPU with
``deterministic`` an interrupted-then-resumed run ends with the same weights, bit for
bit, as an uninterrupted one; a run stopped after its last step resumes into the final
evaluation. Under ``torchrun`` every process runs this loop on its share of each global
batch (DistributedDataParallel); only rank 0 writes and prints.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..artifacts import CHECKPOINT_DIR, RESULT_FILE, RunLock, write_json
from ..device import synchronize
from ..errors import ConfigError
from ..registry import check_model_name
from . import callbacks as cb
from . import config as C
from . import outputs, setup
from .budget import AGREE_EVERY, TimeBudget
from .callbacks import TrainingDiverged, TrainingInterrupted
from .checkpoint import (
    EpochSums,
    load_latest_checkpoint,
    restore_run_state,
    resume_world_note,
    save_run,
)
from .distributed import Processes, global_batch_size, session
from .ema import EMA
from .finetune import Finetuning
from .optim import build_optimizer, training_loss
from .outputs import TrainResult
from .progress import Progress
from .rng import seed_everything

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "TrainingInterrupted", "train"]


def train(
    config: C.TrainConfig,
    *,
    resume: str | os.PathLike | None = None,
    command: str | None = None,
    started: float | None = None,
    on_step: Callable[[int], None] | None = None,
    callbacks: Sequence[cb.Callback] = (),
    test: bool = True,
) -> TrainResult:
    """Train ``config.model`` as ``config`` says; return a :class:`TrainResult`.

    ``resume``: a run directory to continue from its ``checkpoints/last.pt`` (with its
    saved config; :data:`~convzoo.train.config.RESUME_OPTIONS` may change).
    ``command``: the command line for result.json. ``started``: the perf_counter() the
    time budget counts from (default: now). ``on_step``: called with the global step
    after every optimizer step. ``callbacks``: more :class:`~.callbacks.Callback` s,
    run after the run's own. ``test=False``: the test split is never evaluated; the
    final evaluation is of the validation split (result.json: ``final_val_accuracy``
    and, with ``tta``, ``final_val_accuracy_tta``; ``test_accuracy`` is None), as a
    hyperparameter search needs. Under ``torchrun`` every process calls this.

    Raises ConvzooError subclasses for bad options, data or checkpoints,
    TrainingInterrupted after SIGINT/SIGTERM (checkpoint saved), and TrainingDiverged
    when the loss or the weights are no longer finite.
    """
    if not isinstance(config, C.TrainConfig):
        raise ConfigError(f"train() needs a TrainConfig, got {type(config).__name__}")
    with session() as procs:
        trainer = Trainer(config, resume=resume, command=command, started=started, procs=procs)
        trainer.extra_callbacks = list(callbacks)
        trainer.test = test
        return trainer.run(on_step)


class Trainer:
    """One training run (see the module's docstring)."""

    def __init__(self, config, *, resume=None, command=None, started=None, procs=None) -> None:
        self.procs: Processes = procs if procs is not None else Processes()
        self.started = time.perf_counter() if started is None else started
        self.cfg: C.TrainConfig = copy.deepcopy(config)
        self.resume_dir = Path(resume) if resume is not None else None
        self.command = command
        self.ckpt: dict | None = None  # the checkpoint resumed from
        self.resumed_from: Path | None = None
        self.run_dir: Path | None = None
        self.lock: RunLock | None = None  # rank 0's hold on run_dir
        self.callbacks: list[cb.Callback] = []
        self.budget: TimeBudget | None = None
        self.last_is_good = True  # last.pt may become last.prev.pt
        self.epoch = self.batch = self.step = 0  # batch: batches done in epoch
        self.metrics: list[dict] = []  # the metrics.jsonl rows
        self.best_val: float | None = None
        self.best_epoch: int | None = None
        self.train_seconds = 0.0
        self.extra_callbacks: list[cb.Callback] = []  # the caller's, after the run's own
        self.test = True  # False: the final evaluation is of the validation split

    # ------------------------------------------------------------------ build

    def run(self, on_step: Callable[[int], None] | None = None) -> TrainResult:
        procs = self.procs
        torch_state = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )

        try:
            with cb.Signals() as self.signals:
                procs.agree(self._check)  # an error on any rank stops every rank
                if self.resume_dir is not None and procs.enabled:
                    # Only rank 0 reads the run directory; the others get its checkpoint.
                    ckpt, path = procs.broadcast_object((self.ckpt, self.resumed_from))
                    if not procs.is_main:
                        self.cfg = setup.resume_config(self.cfg, ckpt, path, self.resume_dir)
                        self.ckpt, self.resumed_from = ckpt, path
                main = procs.is_main  # only rank 0 prints
                stream = None if main else io.StringIO()
                self.progress = Progress(0, quiet=self.cfg.quiet or not main, stream=stream)
                return self._run(on_step)
        except BaseException as exc:
            for callback in self.callbacks:
                callback.on_exception(self, exc)
            raise
        finally:
            torch.set_num_threads(torch_state[0])
            torch.use_deterministic_algorithms(torch_state[1], warn_only=torch_state[2])
            if self.lock is not None:
                self.lock.release()

    def _check(self) -> None:
        """The options, and on rank 0 the run to resume (locked before it is read)."""
        C.check_config(self.cfg)
        check_model_name(self.cfg.model)
        if self.resume_dir is not None and self.procs.is_main:
            self.lock = RunLock(setup.check_resume_dir(self.resume_dir)).acquire()
            self.ckpt, self.resumed_from = load_latest_checkpoint(self.resume_dir, warn=_warn)
            self.cfg = setup.resume_config(self.cfg, self.ckpt, self.resumed_from, self.resume_dir)

    def _run(self, on_step) -> TrainResult:
        cfg, procs, log = self.cfg, self.procs, self.progress.info
        procs.agree(self._setup)  # an error on any rank stops every rank
        # The run directory is made (and locked) once the run is known to be able to start.
        procs.agree(self._make_run_dir if procs.is_main else lambda: None)
        if procs.enabled:
            log(setup.join_processes(self))
        self.ck_dir = self.run_dir / CHECKPOINT_DIR
        if cfg.recipe and self.ckpt is None:
            log(f"recipe: {cfg.recipe}")
        log(self.data.start_line)
        if getattr(self.model, "pretrained", None) is not None:
            log(self.model.pretrained.line())
        if self.device.type == "cpu" and not procs.enabled:
            # (other ranks of a distributed run start at the same moment and would count)
            setup.warn_if_busy(cfg.threads, self.progress.warn)
        # The side effects, in the order their hooks run.
        self.guard = cb.DivergenceGuard(every=10 if self.device.type == "cpu" else 50)
        if cfg.time_budget is not None:
            self.budget = TimeBudget(cfg.time_budget, started=self.started, procs=procs,
                                     tta=cfg.tta, save_every=cfg.save_every_steps, say=log)  # fmt: skip
        self.callbacks = [self.guard, self.signals, cb.Checkpointing(cfg.save_every_steps),
                          cb.MetricsFile(), cb.ProgressDisplay()]  # fmt: skip
        self.callbacks += [cb.StepHook(on_step)] if on_step is not None else []
        self.callbacks += [self.budget] if self.budget is not None else []
        if cfg.freeze_epochs or cfg.freeze_bn:
            self.callbacks.append(Finetuning(cfg.freeze_epochs, cfg.freeze_bn, log))
        if procs.enabled:
            self.callbacks.append(cb.RankAgreement(AGREE_EVERY.get(self.device.type, 5)))
        self.callbacks += self.extra_callbacks
        self.schedule, self.total_steps = setup.plan_steps(self)
        sums_state = None
        if self.ckpt is not None:
            sums_state = restore_run_state(self, self.ckpt)
            log(
                f"resuming {self.run_dir} from {self.resumed_from.name}: epoch {self.epoch + 1}, "
                f"batch {self.batch}, step {self.step}" + resume_world_note(self)
            )
        outputs.write_config(self)
        self.progress.epochs = self.planned_epochs
        if self.ckpt is None:
            save_run(self)  # a good checkpoint to fall back on from the start
        self.signals.check(self, "during set-up")
        self._loop(sums_state)
        return self._finish()

    def _setup(self) -> None:
        """Everything up to the optimizer that can fail on one rank alone (its data, its
        device, the run directory on rank 0); run under :meth:`Processes.agree`."""
        cfg, procs, warn = self.cfg, self.procs, self.progress.warn
        setup.check_data_dir(cfg.data_dir)
        self.device = setup.configure_device(cfg, procs)  # device, threads, determinism
        seed_everything(cfg.seed)  # the same on every rank: the same initial weights
        if procs.is_main and self.ckpt is None and cfg.out is not None:
            setup.check_new_run_dir(Path(cfg.out))
        self.data = data = setup.load_data(cfg, self.ckpt["data"] if self.ckpt else None, warn)
        saved_options = self.ckpt.get("model_options", {}) if self.ckpt else None
        self.model, self.model_options, self.sync_bn_layers = setup.build_model(
            cfg, data, self.device, procs, saved_options, warn
        )
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.forward_model: nn.Module = torch.compile(self.model) if cfg.compile else self.model
        self.autocast_dtype, self.scaler = setup.mixed_precision(cfg, self.device)
        self.loaders = setup.build_loaders(cfg, data, self.device, procs)
        cfg.lr = C.DEFAULT_LR[cfg.optimizer] if cfg.lr is None else cfg.lr
        cfg.weight_decay = (
            cfg.weight_decay
            if cfg.weight_decay is not None
            else C.DEFAULT_WEIGHT_DECAY[cfg.optimizer]
        )
        self.optimizer = self.new_optimizer()
        self.steps_per_epoch = len(self.loaders.train)
        self.num_test = len(data.ds.test_labels) if self.test else data.num_val
        if not self.test and not data.num_val:
            raise ConfigError("a run that skips the test needs a validation split (--val-size)")
        if self.steps_per_epoch == 0:
            shared = f" shared by {procs.world_size} processes" if procs.enabled else ""
            raise ConfigError(
                f"no training batches: {data.num_train} training images with batch size "
                f"{cfg.batch_size}{shared}"
            )

    def new_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        return build_optimizer(self.model, c.optimizer, lr=c.lr, weight_decay=c.weight_decay,
                               momentum=c.momentum, nesterov=c.nesterov,
                               backbone_lr_scale=c.backbone_lr_scale)  # fmt: skip

    def _make_run_dir(self) -> None:
        self.run_dir, lock = setup.open_run_dir(self.cfg, self.data, new=self.ckpt is None)
        self.lock = self.lock or lock

    # ------------------------------------------------------------------ the loop

    def train_step(self, x, y, lr: float, global_n: int | None = None, *, optimizer=None, ema=None):
        """One optimizer step; returns (loss, correct) as tensors (no host sync).

        In a distributed run ``global_n`` is the size of the global batch: each rank's
        mean loss is weighted by its share of it, so that the gradient DDP averages is
        the gradient of the mean loss over the global batch even when the shares differ.
        ``optimizer`` and ``ema`` default to the run's (the time budget's probe brings
        its own).
        """
        optimizer = self.optimizer if optimizer is None else optimizer
        ema = self.ema if ema is None else ema
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        amp = self.autocast_dtype is not None
        with (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if amp
            else contextlib.nullcontext()
        ):
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
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.step < self.total_steps or self.batch > 0:
            self.epoch_batches = min(spe, self.total_steps - self.epoch * spe)
            if sums_state is not None:  # resumed inside an epoch
                self.sums, sums_state = EpochSums.from_state(sums_state, self.device), None
            else:
                self.sums = EpochSums.zero(self.device)
            self.restart_clock()
            if self.batch < self.epoch_batches:
                for x, y in self.loaders.train.epoch(self.epoch, start=self.batch):
                    lr = cfg.lr * self.schedule.factor(self.step)
                    n_global = global_batch_size(self.data.num_train, cfg.batch_size, self.batch)
                    loss, correct = self.train_step(x, y, lr, n_global)
                    self.sums.add(loss, correct, x.shape[0])
                    self.batch += 1
                    self.step += 1
                    self.tick()
                    for callback in self.callbacks:
                        callback.on_step_end(self)
                    # (a time budget may have moved the end of the run)
                    self.epoch_batches = min(spe, self.total_steps - self.epoch * spe)
                    if self.batch >= self.epoch_batches:
                        break
            self.sync()
            self.tick()
            self._epoch_end(lr)
            self.signals.check(self, f"after epoch {self.epoch}")

    def _epoch_end(self, lr: float) -> None:
        from ..evaluate import evaluate

        sums = self.sums.summed(self.procs)
        self.guard.check_loss(self, sums, summed=True)
        self.epoch_end_started = t0 = time.perf_counter()
        eval_model = self.ema.module if self.ema is not None else self.model
        val_loss = val_acc = None
        if self.loaders.val is not None:
            k = self.data.ds.num_classes
            res = evaluate(eval_model, self.loaders.val, k, distributed=self.procs.enabled)
            val_loss, val_acc = res.loss, res.accuracy
            for callback in self.callbacks:
                callback.on_validation_end(self, self.data.num_val, time.perf_counter() - t0)
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
        for callback in self.callbacks:
            callback.on_epoch_end(self, row)

    # ------------------------------------------------------------------ the end

    def _finish(self) -> TrainResult:
        from ..evaluate import evaluate, metrics_from_logits, predict_logits

        cfg, procs, ds = self.cfg, self.procs, self.data.ds
        self.guard.check_weights(self)
        final = self.ema.module if self.ema is not None else self.model
        final.eval()
        if not self.test:
            return self._finish_untested(final)
        # Distributed runs: each rank tests its shard; the counts are added up.
        test_loader = self.loaders.eval_loader(ds.test_images, ds.test_labels, procs)
        test_logits = None  # kept for the one-run report, so it needs no second test pass
        if procs.enabled:
            res = evaluate(final, test_loader, ds.num_classes, distributed=True)
        else:
            test_logits = predict_logits(final, test_loader)
            res = metrics_from_logits(*test_logits, ds.num_classes)
        res_tta = None
        if cfg.tta:
            res_tta = evaluate(
                final, test_loader, ds.num_classes, tta=True, distributed=procs.enabled
            )
        self.signals.check(self, "in the final evaluation")
        out = TrainResult({}, self.run_dir, final, list(self.metrics), list(ds.classes),
                          res.confusion, test_logits, ds)  # fmt: skip
        if not procs.is_main:  # rank 0 writes the files
            out.result = {"rank": procs.rank, "steps": self.step,
                          "test_accuracy": res.accuracy, "run_dir": str(self.run_dir)}  # fmt: skip
            out.confusion = None
            return out
        outputs.write_model(self, final)
        if self.signals.received is not None:  # rank 0 alone: the others are done
            self.signals.stop(self, self.signals.received, where="while writing the results")
        out.result = outputs.result(self, final, res, res_tta)
        write_json(self.run_dir / RESULT_FILE, out.result)
        for callback in self.callbacks:
            callback.on_train_end(self, out.result)
        return out

    def _finish_untested(self, final: nn.Module) -> TrainResult:
        """The end of a run that never reads the test split: the final model is
        evaluated on the validation split (with TTA when the run uses it)."""
        from ..evaluate import evaluate

        cfg, procs, ds = self.cfg, self.procs, self.data.ds
        res = evaluate(final, self.loaders.val, ds.num_classes, distributed=procs.enabled)
        res_tta = None
        if cfg.tta:
            res_tta = evaluate(
                final, self.loaders.val, ds.num_classes, tta=True, distributed=procs.enabled
            )
        self.signals.check(self, "in the final evaluation")
        out = TrainResult({}, self.run_dir, final, list(self.metrics), list(ds.classes),
                          None, None, ds)  # fmt: skip
        if not procs.is_main:
            out.result = {"rank": procs.rank, "steps": self.step, "test_accuracy": None}
            return out
        outputs.write_model(self, final)
        out.result = outputs.untested_result(self, final, res, res_tta)
        write_json(self.run_dir / RESULT_FILE, out.result)
        for callback in self.callbacks:
            callback.on_train_end(self, out.result)
        return out

    # ------------------------------------------------------------------ for the callbacks

    def tick(self) -> None:
        """Count the time since the last tick as training time."""
        now = time.perf_counter()
        dt, self._clock = now - self._clock, now
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
        """A new plan (time budget): the schedule is stretched to it."""
        self.total_steps = total
        self.schedule.total_steps = max(total, 1)
        self.progress.epochs = self.planned_epochs


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)
