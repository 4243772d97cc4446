"""The side effects of a training run, as callbacks of the trainer.

The :class:`~convzoo.train.trainer.Trainer` owns the loop; everything else a run does
along the way is a :class:`Callback` with named hooks (the split of Lightning's Trainer
and Callback, without its hierarchy):

    on_train_start(t)                     the state is built (or restored); before step 1
    on_step_end(t)                        after every optimizer step (t.sums: the epoch's sums)
    on_validation_end(t, images, seconds) after the validation pass of an epoch
    on_epoch_end(t, row)                  after an epoch (row: its metrics.jsonl line)
    on_train_end(t, result)               after the final evaluation and writing
    on_exception(t, exc)                  the run stops with ``exc``

Hooks run in the order of the trainer's list. A callback with state has
``state_dict()`` / ``load_state_dict()``. :func:`rank_zero_only` marks a hook (or any
function) that only rank 0 of a distributed run performs: printing and writing files.

Here: :class:`Signals` (SIGINT/SIGTERM stop at the next step boundary with a
checkpoint), :class:`DivergenceGuard` (a NaN or infinite loss or weights stop the run),
:class:`Checkpointing`, :class:`MetricsFile` (metrics.jsonl), :class:`ProgressDisplay`,
:class:`StepHook` (a caller's function after every step) and :class:`RankAgreement`
(distributed runs agree on stop signals and the plan). The time budget is
:class:`convzoo.train.budget.TimeBudget`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..artifacts import METRICS_FILE, RESULT_FILE, atomic_write_text, to_json, write_json
from .checkpoint import save_run
from .distributed import rank_zero_only
from .outputs import diverged_result

if TYPE_CHECKING:
    from .trainer import Trainer


class TrainingInterrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM after saving a checkpoint."""

    def __init__(self, message: str, signum: int, run_dir: Path) -> None:
        super().__init__(message)
        self.signum = signum
        self.run_dir = run_dir
        self.exit_code = 128 + int(signum)


class TrainingDiverged(Exception):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class Callback:
    """A side effect of a training run; override the hooks it needs."""

    def on_train_start(self, t: Trainer) -> None: ...
    def on_step_end(self, t: Trainer) -> None: ...
    def on_validation_end(self, t: Trainer, images: int, seconds: float) -> None: ...
    def on_epoch_end(self, t: Trainer, row: dict) -> None: ...
    def on_train_end(self, t: Trainer, result: dict) -> None: ...
    def on_exception(self, t: Trainer, exc: BaseException) -> None: ...

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


# -- stop signals ----------------------------------------------------------------------


class Signals(Callback):
    """SIGINT/SIGTERM set a flag; the run saves and stops at the next step boundary, or
    at the next boundary of a phase (set-up, validation, the final test, writing).

    A second SIGINT interrupts at once (checkpoints are written atomically, so this is
    safe too). Used as a context manager around the run: the handlers are put back.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def on_step_end(self, t: Trainer) -> None:
        if not t.procs.enabled and self.received is not None:  # (distributed: RankAgreement)
            self.stop(t, self.received, in_epoch=True)

    def check(self, t: Trainer, where: str) -> None:
        """Stop now if a signal came (outside the training loop, where the state is
        saved already). Distributed runs: a collective, called by every rank."""
        signum = self.agree(t) if t.procs.enabled else self.received
        if signum is not None:
            self.stop(t, signum, where=where)

    def agree(self, t: Trainer) -> int | None:
        """Distributed runs: a stop signal received by any rank, and rank 0's planned
        steps, made known to every rank (one small all-reduce)."""
        mine = [self.received or 0, t.total_steps if t.procs.is_main else 0]
        signum, total = (int(v) for v in t.procs.all_reduce(torch.tensor(mine), "max"))
        if total != t.total_steps:
            t.set_total_steps(total)
        return signum or None

    def stop(self, t: Trainer, signum: int, *, in_epoch: bool = False, where: str = "") -> None:
        """Raise :class:`TrainingInterrupted`; inside an epoch, save its state first."""
        if in_epoch:
            t.sync()
            t.tick()
            t.guard.check_loss(t, t.sums)
            save_run(t, t.sums)
        where = where or f"at epoch {t.epoch + 1}"
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name} received: stopped {where}, step {t.step}; "
            f"checkpoint saved to {t.ck_dir / 'last.pt'}. Resume with: convzoo train "
            f"{t.cfg.model} --resume {t.run_dir}",
            signum,
            t.run_dir,
        )


class RankAgreement(Callback):
    """Distributed runs: every few steps the ranks agree on a stop signal received by
    any of them and on rank 0's planned steps, so that all stop at the same step and
    follow the same time-budget plan."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, t: Trainer) -> None:
        if t.step % self.every == 0:
            signum = t.signals.agree(t)
            if signum is not None:
                t.signals.stop(t, signum, in_epoch=True)


# -- divergence ------------------------------------------------------------------------


class DivergenceGuard(Callback):
    """A loss that is no longer finite (checked every few steps and at every epoch's
    end) or weights that are not (checked before every checkpoint and at the end) stop
    the run with :class:`TrainingDiverged`; result.json then says ``"diverged": true``
    and the last good checkpoint is kept. No model.safetensors is written."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.reason: str | None = None

    def on_step_end(self, t: Trainer) -> None:
        if t.step % self.every == 0:
            self.check_loss(t, t.sums)

    def check_loss(self, t: Trainer, sums, *, summed: bool = False) -> None:
        """Raise if the loss is not finite on any rank (every rank calls this at the
        same steps and they all stop together)."""
        loss = sums.loss_sum
        if t.procs.enabled and not summed:
            loss = t.procs.all_reduce(loss)
        if bool(torch.isfinite(loss)):
            return
        what = "NaN" if bool(torch.isnan(loss)) else "infinite"
        self._diverged(t, f"the training loss became {what}")

    def check_weights(self, t: Trainer) -> None:
        """Raise if a weight (or EMA weight) is NaN or infinite (the same on every rank)."""
        for module in (t.model, t.ema.module if t.ema is not None else None):
            if module is None:
                continue
            for v in module.state_dict().values():
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    self._diverged(t, "the weights became NaN or infinite")

    def _diverged(self, t: Trainer, what: str) -> None:
        last = t.ck_dir / "last.pt"
        kept = (
            f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        )
        self.reason = f"{what} in epoch {t.epoch + 1} (by step {t.step})"
        raise TrainingDiverged(
            f"{self.reason}; stopped; {kept}. Try a lower --lr (it was {t.cfg.lr:g})",
            t.run_dir,
        )

    @rank_zero_only
    def on_exception(self, t: Trainer, exc: BaseException) -> None:
        if isinstance(exc, TrainingDiverged) and getattr(t, "run_dir", None) is not None:
            write_json(t.run_dir / RESULT_FILE, diverged_result(t, self.reason or str(exc)))


# -- files -----------------------------------------------------------------------------


class Checkpointing(Callback):
    """checkpoints/last.pt every ``every`` steps (0: only at epoch ends) and after every
    epoch; best.pt when the validation accuracy improved."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, t: Trainer) -> None:
        if self.every and t.step % self.every == 0 and t.batch < t.epoch_batches:
            t.guard.check_loss(t, t.sums)
            t.sync()
            t.tick()
            save_run(t, t.sums)
            t.restart_clock()  # saving is not training time

    def on_epoch_end(self, t: Trainer, row: dict) -> None:
        save_run(t, best=t.best_epoch == row["epoch"])


class MetricsFile(Callback):
    """metrics.jsonl, rewritten whole (atomically) after every epoch."""

    @rank_zero_only
    def on_epoch_end(self, t: Trainer, row: dict) -> None:
        text = "".join(to_json(r, indent=None) + "\n" for r in t.metrics)
        atomic_write_text(t.run_dir / METRICS_FILE, text)


class ProgressDisplay(Callback):
    """The live bar, a line per epoch, and the final summary (rank 0)."""

    @rank_zero_only
    def on_step_end(self, t: Trainer) -> None:
        s = t.sums
        t.progress.step(
            t.epoch + 1, t.batch, t.epoch_batches, s.loss_sum, s.correct, s.seen, s.seconds
        )

    @rank_zero_only
    def on_epoch_end(self, t: Trainer, row: dict) -> None:
        t.progress.epoch_end(row, t.planned_epochs)

    @rank_zero_only
    def on_train_end(self, t: Trainer, result: dict) -> None:
        if not t.cfg.quiet:
            t.progress.info(summary_lines(result, t.run_dir))


def summary_lines(r: dict, run_dir: Path) -> str:
    """The final summary a run prints."""
    from ..units import format_duration

    best = r["best_val_accuracy"]
    tta = f" ({r['test_accuracy_tta']:.2%} with flip TTA)" if "test_accuracy_tta" in r else ""
    budget = f" of a {format_duration(r['time_budget'])} budget" if "time_budget" in r else ""
    lines = [
        f"{r['model']} on {r['dataset']}: test accuracy {r['test_accuracy']:.2%}{tta}",
        f"best validation accuracy {best:.2%} (epoch {r['best_epoch']})"
        if best is not None
        else "no validation set",
        f"{r['steps']} steps ({r['epochs']:g} epoch{'' if r['epochs'] == 1 else 's'}), "
        f"training {format_duration(r['train_seconds'])}, "
        f"wall {format_duration(r['wall_seconds'])}{budget}",
        f"files in {run_dir}: config.json metrics.jsonl result.json model.safetensors "
        "checkpoints/{last,best}.pt curves.png confusion.png",
    ]
    return "\n".join(lines)


class StepHook(Callback):
    """Calls ``fn(step)`` after every optimizer step (for tests and tools; an exception
    raised there stops the run as a crash would)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def on_step_end(self, t: Trainer) -> None:
        self.fn(t.step)
