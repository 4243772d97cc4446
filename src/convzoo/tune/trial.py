"""One trial: a convzoo training run with the trial's time budget that never reads the
test split, reporting validation accuracy to the study at fixed points of its schedule.

The points are fractions of the trial's own planned steps (:data:`REPORT_PERCENTS`),
not epochs or seconds: every trial's one-cycle schedule is stretched over the steps its
budget allows, so at 40% of its steps each trial is at the same phase of its schedule,
and the values are comparable (docs/tune.md). At each point the model the run would
predict with (EMA weights when used, flip TTA when used) is evaluated on the first
:data:`POINT_IMAGES` validation images, the same images for every trial. The
objective is that model's accuracy on the whole validation split at the end.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ..train import TrainingDiverged, TrainingInterrupted, train
from ..train.budget import BudgetTooShort
from ..train.callbacks import Callback
from .study import FINAL_STEP, REPORT_PERCENTS

POINT_IMAGES = 2000


class TrialInterrupted(Exception):
    """SIGINT or SIGTERM stopped the trial (it is recorded as FAIL and queued again)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class ReportPoints(Callback):
    """At each point of :data:`REPORT_PERCENTS`, evaluate the predicting model on the
    first validation images, report to ``trial`` and stop if the pruner says so."""

    def __init__(self, trial, percents=REPORT_PERCENTS, images: int = POINT_IMAGES) -> None:
        self.trial = trial
        self.percents = list(percents)
        self.images = images
        self.loader = None
        self.percent_done = 0  # how far the run got, in percent of its planned steps
        self.curve: dict[int, float] = {}

    def on_train_start(self, t) -> None:
        n = min(self.images, t.data.num_val)
        self.loader = t.loaders.eval_loader(t.data.val_x[:n], t.data.val_y[:n], t.procs)

    def on_step_end(self, t) -> None:
        import optuna

        from ..evaluate import evaluate

        self.percent_done = int(100 * t.step / max(t.total_steps, 1))
        if not self.percents or 100 * t.step < self.percents[0] * t.total_steps:
            return
        point = self.percents.pop(0)
        t.sync()
        t.tick()
        model = t.ema.module if t.ema is not None else t.model
        res = evaluate(model, self.loader, t.data.ds.num_classes, tta=t.cfg.tta)
        t.model.train()
        t.restart_clock()  # the evaluation is not training time
        self.curve[point] = res.accuracy
        self.trial.report(res.accuracy, point)
        if self.trial.should_prune():
            self.trial.set_user_attr("stopped_at_percent", point)
            raise optuna.TrialPruned(f"pruned at {point}% of its steps")


def run_trial(trial, plan, stop) -> float:
    """Train the trial ``trial`` (an Optuna trial) of ``plan`` (a :class:`TunePlan`).

    Returns the objective; raises :class:`optuna.TrialPruned` (pruned, or diverged:
    a hopeless trial, reported as accuracy 0) and :class:`TrialInterrupted`
    (``stop.received`` was set by a signal, or the run got one).
    """
    import optuna

    options = plan.space.sample(trial, plan.base)
    if stop.received is not None:
        _requeue(trial)
        raise TrialInterrupted(stop.received)
    run_dir = plan.out / "trials" / f"{trial.number:04d}-{socket.gethostname()}-{os.getpid()}"
    cfg = plan.trial_config(options, run_dir)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("options", options)
    points = ReportPoints(trial)
    started = time.perf_counter()
    try:
        out = train(cfg, test=False, callbacks=[points], command=None)
    except TrainingDiverged:
        step = min(max(points.percent_done, 1), FINAL_STEP - 1)
        trial.report(0.0, step)
        trial.set_user_attr("diverged", True)
        trial.set_user_attr("stopped_at_percent", step)
        raise optuna.TrialPruned(f"diverged at {step}% of its steps") from None
    except BudgetTooShort as exc:
        # The sampled settings (say, full resolution at double width) cannot take one
        # step in the trial budget on this machine: a hopeless trial, not a user mistake.
        trial.set_user_attr("too_slow", str(exc))
        raise optuna.TrialPruned(f"too slow for the trial budget: {exc}") from None
    except TrainingInterrupted as exc:
        stop.received = exc.signum
        _requeue(trial)
        raise TrialInterrupted(exc.signum) from None
    except KeyboardInterrupt:  # a second Ctrl-C
        _requeue(trial)
        raise
    finally:
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        _drop_checkpoints(run_dir)
    result = out.result
    value = result["final_val_accuracy_tta"] if cfg.tta else result["final_val_accuracy"]
    trial.set_user_attr("steps", result["steps"])
    trial.set_user_attr("planned_steps", result.get("planned_steps"))
    trial.report(value, FINAL_STEP)
    return float(value)


def _requeue(trial) -> None:
    """Queue the trial again with its parameters: a signal stopped it (it ends FAIL),
    and the next run of the command trains it."""
    trial.set_user_attr("interrupted", True)
    trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _drop_checkpoints(run_dir: Path) -> None:
    """A finished trial keeps its results and weights, not its checkpoints."""
    import shutil

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
