"""Fitting a training run to a wall-clock budget (``--time-budget``).

Before training, a few real steps on a copy of the state measure the step time, and
evaluation and saving are timed; the number of steps is chosen so that the
learning-rate schedule completes, with the final test evaluation and saving, inside the
budget. While training, :class:`TimeBudget` (a callback) re-fits the remaining steps to
the measured speed.

The budget sees the run through a small interface only: the measuring is done by the
three callables of a :class:`BudgetProbe`, and while training it reads the trainer's
``step``, ``train_seconds``, ``total_steps``, ``steps_per_epoch`` and ``procs`` and
changes the plan with ``set_total_steps(n)``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ConfigError
from ..units import format_duration
from .callbacks import Callback, rank_zero_only
from .distributed import Processes, SetupFailed
from .schedule import fit_steps

BUDGET_MARGIN = 0.03  # plan to end this fraction before the budget
# What the caller does after train() returns (plots, the one-run report), in seconds:
# an allowance, since the training package does not draw.
AFTER_TRAINING_SECONDS = 1.0
# Distributed runs: rank 0 re-plans every this many steps (when the ranks agree).
AGREE_EVERY = {"cpu": 1, "cuda": 5}


class BudgetTooShort(ConfigError):
    """The time budget cannot fit one step after set-up and the final evaluation."""


@dataclasses.dataclass
class BudgetProbe:
    """How the budget measures a run before planning it.

    ``steps()`` yields the seconds of each probe step, taken on the real model and data
    (the run's weights, optimizer state and RNG are put back when the generator is
    closed); ``evaluate()`` returns (images, seconds) of a timed evaluation; ``save()``
    returns the seconds a checkpoint takes to write.
    """

    steps: Callable[[], Iterator[float]]
    evaluate: Callable[[], tuple[int, float]]
    save: Callable[[], float]


class TimeBudget(Callback):
    """Plans the steps of a ``--time-budget`` run and keeps the plan fitted to it.

    ``state_dict()`` is the plan (the checkpoint's ``budget_plan``); a resumed run keeps
    the plan it was given and is not re-planned.
    """

    def __init__(
        self,
        seconds: float,
        *,
        started: float,
        procs: Processes,
        tta: bool,
        save_every: int,
        say: Callable[[str], None],
    ) -> None:
        self.seconds = float(seconds)
        self.started = started
        self.procs = procs
        self.tta = tta
        self.save_every = save_every
        self.say = say
        self.plan: dict[str, Any] | None = None
        self.rate = 0.0
        self.resumed = False
        self.interval = max(0.5, 0.01 * self.seconds)
        self.window = (0, 0.0, time.perf_counter())  # step, train seconds, clock

    def state_dict(self) -> dict[str, Any] | None:
        return self.plan

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.plan = state
        self.resumed = True

    # -- before training -------------------------------------------------------------

    def measure_and_plan(
        self, probe: BudgetProbe, *, steps_per_epoch: int, val_images: int, test_images: int
    ) -> int:
        """The steps that fit the budget, from measured step, evaluation and saving speed.

        In a distributed run every rank takes the probe steps together (DDP needs them
        all) and rank 0's plan is followed by all.
        """
        timed, seconds, t_warm, done = 0, 0.0, None, 0
        limit = max(1.0, min(3.0, 0.02 * self.seconds))
        probe_start = time.perf_counter()
        steps = probe.steps()
        try:
            for dt in steps:
                done += 1
                over = time.perf_counter() - probe_start > 0.3 * self.seconds
                if done <= 2:  # warm-up steps (allocation, kernel choice, compilation)
                    t_warm = dt
                else:
                    timed += 1
                    seconds += dt
                stop = over or (seconds >= limit and timed >= 3) or timed >= 30
                if self.procs.main_says(stop):  # every rank takes the same steps
                    break
        finally:
            steps.close()  # puts the run's state back
        # With no timed step (a step is a large part of the budget) the last warm one is used.
        step_s = seconds / timed if timed else (t_warm or 1.0)
        fit = dict(steps_per_epoch=steps_per_epoch, val_images=val_images, test_images=test_images)
        if not self.procs.enabled:
            return self._fit(probe, step_s, **fit)
        # Rank 0 measures the rest and plans; every rank follows its plan.
        total, error = 0, None
        if self.procs.is_main:
            try:
                total = self._fit(probe, step_s, **fit)
            except ConfigError as exc:
                error = str(exc)
        total, self.plan, self.rate, error = self.procs.broadcast_object(
            (total, self.plan, self.rate or step_s, error)
        )
        if error is not None:
            raise SetupFailed(error, show=self.procs.is_main)
        return total

    def _fit(
        self,
        probe: BudgetProbe,
        step_s: float,
        *,
        steps_per_epoch: int,
        val_images: int,
        test_images: int,
    ) -> int:
        images, eval_s = probe.evaluate()
        eval_rate = images / max(eval_s, 1e-6)  # images/s
        eval_rate *= self.procs.world_size  # the ranks share the evaluations
        save_s = probe.save()
        spe = steps_per_epoch
        val_s = val_images / eval_rate
        final_fixed_s = 2 * save_s + AFTER_TRAINING_SECONDS + 0.5
        final_s = test_images / eval_rate * (3 if self.tta else 1) + final_fixed_s
        elapsed = time.perf_counter() - self.started
        avail = self.seconds * (1 - BUDGET_MARGIN) - elapsed - final_s
        total = fit_steps(
            avail,
            step_s,
            val_s + save_s,
            done=0,
            steps_per_epoch=spe,
            save_s=save_s,
            save_every=self.save_every,
        )
        if total < 1:
            raise BudgetTooShort(
                f"time budget {format_duration(self.seconds)} is too short: set-up took "
                f"{elapsed:.1f}s, one step takes {step_s:.2f}s and the final evaluation "
                f"and saving about {final_s:.1f}s"
            )
        self.plan = {
            "time_budget": self.seconds,
            "planned_steps": total,
            "planned_epochs": total / spe,
            "step_seconds": step_s,
            "eval_images_per_second": eval_rate,
            "epoch_end_seconds": val_s + save_s,
            "final_seconds": final_s,
            "final_fixed_seconds": final_fixed_s,
            "save_seconds": save_s,
            "setup_seconds": elapsed,
            "planned_seconds": elapsed
            + total * step_s
            + math.ceil(total / spe) * (val_s + save_s)
            + final_s,
            "replans": 0,
        }
        self.rate = step_s
        self.say(
            f"time budget {format_duration(self.seconds)}: {step_s * 1000:.0f} ms a step, "
            f"{total} steps planned ({total / spe:.2f} epochs of {spe} steps)"
        )
        return total

    # -- while training --------------------------------------------------------------

    def on_train_start(self, t) -> None:
        self.window = (t.step, t.train_seconds, time.perf_counter())

    def on_step_end(self, t) -> None:
        if t.procs.enabled and t.step % AGREE_EVERY.get(t.device.type, 5):
            return  # the ranks share rank 0's plan when they agree (RankAgreement)
        t.tick()
        self._replan(t)

    @rank_zero_only
    def _replan(self, t, force: bool = False) -> None:
        """Re-fit the remaining steps to the measured speed.

        Runs every 1% of the budget (at least every half second). The step time used
        is the slower of a moving average and the latest window, so that a machine that
        slows down is believed at once and one that speeds up only gradually; the plan
        grows by at most 10% at a time.
        """
        plan = self.plan
        if plan is None or self.resumed or t.step >= t.total_steps:
            return
        now = time.perf_counter()
        step0, seconds0, clock0 = self.window
        if not force and now - clock0 < self.interval:
            return
        t.sync()
        now = time.perf_counter()
        window_steps = t.step - step0
        window_s = t.train_seconds - seconds0
        self.window = (step0, seconds0, now)
        if window_steps < 1 or window_s <= 0:
            return
        self.window = (t.step, t.train_seconds, now)
        window_rate = window_s / window_steps
        self.rate = 0.7 * self.rate + 0.3 * window_rate
        rate = max(self.rate, window_rate)
        avail = (
            plan["time_budget"] * (1 - BUDGET_MARGIN) - (now - self.started) - plan["final_seconds"]
        )
        total = fit_steps(
            avail,
            rate,
            plan["epoch_end_seconds"],
            done=t.step,
            steps_per_epoch=t.steps_per_epoch,
            save_s=plan["save_seconds"],
            save_every=self.save_every,
        )
        total = max(t.step, min(total, int(t.total_steps * 1.1) + 1))
        if total != t.total_steps:
            t.set_total_steps(total)
            plan["replans"] += 1

    def on_validation_end(self, t, images: int, seconds: float) -> None:
        """Correct the estimate of the final test pass from a validation pass."""
        plan = self.plan
        if plan is None or images <= 0 or seconds <= 0:
            return
        rate = images / seconds
        plan["eval_images_per_second"] = rate
        plan["final_seconds"] = (
            t.num_test / rate * (3 if self.tta else 1) + plan["final_fixed_seconds"]
        )

    def on_epoch_end(self, t, row: dict) -> None:
        if self.plan is not None:
            spent = time.perf_counter() - t.epoch_end_started
            self.plan["epoch_end_seconds"] = 0.5 * self.plan["epoch_end_seconds"] + 0.5 * spent
        step, seconds, _ = self.window
        self.window = (step, seconds, time.perf_counter())  # validation is not training time

    def result_fields(self, total_steps: int) -> dict[str, Any]:
        """The keys result.json gets from the budget."""
        plan = self.plan or {}
        if not plan:
            return {}
        return {
            "time_budget": plan["time_budget"],
            "planned_steps": plan["planned_steps"],
            "planned_seconds": round(plan["planned_seconds"], 3),
            "final_planned_steps": total_steps,
            "replans": plan["replans"],
        }
