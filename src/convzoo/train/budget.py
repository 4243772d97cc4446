"""Fitting a training run to a wall-clock budget (``--time-budget``).

Before training, a few real steps on a copy of the state measure the step time, and
evaluation, saving and plotting are timed; the number of steps is chosen so that the
learning-rate schedule completes, with the final test evaluation and saving, inside the
budget. While training, :meth:`BudgetPlanning._replan` re-fits the remaining steps to
the measured speed.
"""

from __future__ import annotations

import copy
import math
import time

from ..errors import ConfigError
from .checkpoint import save_checkpoint
from .distributed import SetupFailed
from .ema import EMA
from .rng import rng_state, set_rng_state
from .schedule import fit_steps, format_duration

BUDGET_MARGIN = 0.03  # plan to end this fraction before the budget


class BudgetPlanning:
    """The time-budget methods of a training run (mixed into ``loop._Run``, whose
    attributes they use: the model, optimizer, loaders, schedule and progress)."""

    def _plan_budget(self) -> int:
        """Steps that fit the time budget, from measured step, evaluation and saving speed.

        The measuring steps run on the real model and data, after which the weights,
        optimizer state and RNG are put back as they were: they are not part of the run.
        In a distributed run every rank takes the probe steps together (DDP needs them
        all) and rank 0's plan is followed by all.
        """
        cfg = self.cfg
        budget = float(cfg.time_budget)
        model_state = copy.deepcopy(self.model.state_dict())
        rng = rng_state()
        real_opt, real_ema = self.optimizer, self.ema
        self.optimizer = self._new_optimizer(self.model)
        if real_ema is not None:
            self.ema = EMA(self.model, cfg.ema)
        scaler_state = self.scaler.state_dict() if self.scaler is not None else None
        timed, seconds, t_warm, done = 0, 0.0, None, 0
        limit = max(1.0, min(3.0, 0.02 * budget))
        probe_start = time.perf_counter()
        try:
            for epoch in range(1000):
                for b, (x, y) in enumerate(self.train_loader.epoch(epoch)):
                    t0 = time.perf_counter()
                    self._train_step(x, y, cfg.lr / 25, self._global_n(b))
                    self._sync()
                    dt = time.perf_counter() - t0
                    done += 1
                    over = time.perf_counter() - probe_start > 0.3 * budget
                    if done <= 2:  # warm-up steps (allocation, kernel choice, compilation)
                        t_warm = dt
                    else:
                        timed += 1
                        seconds += dt
                    stop = over or (seconds >= limit and timed >= 3) or timed >= 30
                    if self.procs.main_says(stop):  # every rank takes the same steps
                        break
                else:
                    continue
                break
        finally:
            self.model.load_state_dict(model_state)
            self.optimizer, self.ema = real_opt, real_ema
            if scaler_state is not None:
                self.scaler.load_state_dict(scaler_state)
            set_rng_state(rng)
        # With no timed step (a step is a large part of the budget) the last warm one is used.
        step_s = seconds / timed if timed else (t_warm or 1.0)
        if not self.procs.enabled:
            return self._fit_budget(budget, step_s)
        # Rank 0 measures the rest and plans; every rank follows its plan.
        total, error = 0, None
        if self.procs.is_main:
            try:
                total = self._fit_budget(budget, step_s)
            except ConfigError as exc:
                error = str(exc)
        total, self.budget_plan, self._rate, error = self.procs.broadcast_object(
            (total, self.budget_plan, getattr(self, "_rate", step_s), error)
        )
        if error is not None:
            raise SetupFailed(error, show=self.procs.is_main)
        self.model.train()
        return total

    def _fit_budget(self, budget: float, step_s: float) -> int:
        """The steps that fit the budget at ``step_s`` seconds a step, after measuring
        evaluation, saving and plotting speed (rank 0 of a distributed run)."""
        from ..data.loader import Loader
        from ..evaluate import evaluate

        cfg = self.cfg
        spe = self.steps_per_epoch
        # Evaluation speed on a few training images (no augmentation): the test set is
        # only used once, at the end.
        n_probe = min(self.num_train, self.eval_batch)
        probe = Loader(
            self.train_x[:n_probe],
            self.train_y[:n_probe],
            batch_size=self.eval_batch,
            **self._loader_common,
        )
        evaluate(self.model, probe, self.ds.num_classes)
        t0 = time.perf_counter()
        evaluate(self.model, probe, self.ds.num_classes)
        self._sync()
        eval_rate = n_probe / max(time.perf_counter() - t0, 1e-6)  # images/s
        eval_rate *= self.procs.world_size  # the ranks share the evaluations
        # Saving a checkpoint (about the model's size twice, with the optimizer's state)
        # and drawing the plots.
        t0 = time.perf_counter()
        probe_path = self.ck_dir / ".probe.pt"
        weights = self.model.state_dict()
        save_checkpoint(
            {
                "model": weights,
                "optimizer": weights,
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
            },
            probe_path,
        )
        probe_path.unlink()
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._plot_probe()
        plot_s = time.perf_counter() - t0
        self.model.train()

        val_s = self.num_val / eval_rate
        test_n = len(self.ds.test_labels)
        final_fixed_s = 2 * save_s + plot_s + 0.5
        final_s = test_n / eval_rate * (3 if cfg.tta else 1) + final_fixed_s
        elapsed = time.perf_counter() - self.started
        avail = budget * (1 - BUDGET_MARGIN) - elapsed - final_s
        total = fit_steps(
            avail,
            step_s,
            val_s + save_s,
            done=0,
            steps_per_epoch=spe,
            save_s=save_s,
            save_every=cfg.save_every_steps,
        )
        if total < 1:
            raise ConfigError(
                f"time budget {format_duration(budget)} is too short: set-up took "
                f"{elapsed:.1f}s, one step takes {step_s:.2f}s and the final evaluation "
                f"and saving about {final_s:.1f}s"
            )
        self.budget_plan = {
            "time_budget": budget,
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
        self._rate = step_s
        self.progress.info(
            f"time budget {format_duration(budget)}: {step_s * 1000:.0f} ms a step, "
            f"{total} steps planned ({total / spe:.2f} epochs of {spe} steps)"
        )
        return total

    def _plot_probe(self) -> None:
        try:
            from ..report.plots import plot_confusion, plot_curves
        except ImportError:
            return
        rows = [
            {
                "epoch": i,
                "train_loss": 1.0 / i,
                "train_accuracy": 0.5,
                "val_loss": 1.0 / i,
                "val_accuracy": 0.5,
                "lr": 0.1,
                "seconds": 1.0,
            }
            for i in (1, 2)
        ]
        k = self.ds.num_classes
        try:
            plot_curves(rows, self.run_dir / "curves.png")
            plot_confusion(
                [[1] * k for _ in range(k)], list(self.ds.classes), self.run_dir / "confusion.png"
            )
        except Exception:  # noqa: BLE001 - only a timing probe; the real plots report errors
            pass

    def _replan(self, force: bool = False) -> None:
        """Under a time budget: re-fit the remaining steps to the measured speed.

        Runs every 1% of the budget (at least every half second). The step time used
        is the slower of a moving average and the latest window, so that a machine that
        slows down is believed at once and one that speeds up only gradually; the plan
        grows by at most 10% at a time.
        """
        plan = self.budget_plan
        if plan is None or self.ckpt is not None or self.step >= self.total_steps:
            return
        now = time.perf_counter()
        if not force and now - self._window_time < self._replan_interval:
            return
        self._sync()
        now = time.perf_counter()
        window_steps = self.step - self._window_step
        window_s = self.train_seconds - self._window_seconds
        self._window_time = now
        if window_steps < 1 or window_s <= 0:
            return
        self._window_step, self._window_seconds = self.step, self.train_seconds
        window_rate = window_s / window_steps
        self._rate = 0.7 * self._rate + 0.3 * window_rate
        rate = max(self._rate, window_rate)
        avail = (
            plan["time_budget"] * (1 - BUDGET_MARGIN) - (now - self.started) - plan["final_seconds"]
        )
        total = fit_steps(
            avail,
            rate,
            plan["epoch_end_seconds"],
            done=self.step,
            steps_per_epoch=self.steps_per_epoch,
            save_s=plan["save_seconds"],
            save_every=self.cfg.save_every_steps,
        )
        total = max(self.step, min(total, int(self.total_steps * 1.1) + 1))
        if total != self.total_steps:
            self.total_steps = total
            self.schedule.total_steps = max(total, 1)
            plan["replans"] += 1
            self.progress.epochs = self.planned_epochs

    def _measured_eval(self, images: int, seconds: float) -> None:
        """Correct the estimate of the final test pass from a validation pass."""
        plan = self.budget_plan
        if plan is None or images <= 0 or seconds <= 0:
            return
        rate = images / seconds
        plan["eval_images_per_second"] = rate
        test_n = len(self.ds.test_labels)
        plan["final_seconds"] = (
            test_n / rate * (3 if self.cfg.tta else 1) + plan["final_fixed_seconds"]
        )
