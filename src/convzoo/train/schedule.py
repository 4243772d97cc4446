"""Learning-rate schedules as functions of the step, and time-budget parsing.

A schedule is defined on fractions of the run, so that the same recipe fits any number
of steps: a recipe says "30 epochs, warm up for 2", and under a time budget the same
shape is squeezed into the steps that fit.

- ``onecycle``: Smith & Topin (2017), "Super-Convergence": a cosine rise from
  ``lr / 25`` to ``lr`` over the warm-up, then a cosine fall to ``lr / 25 / 1e4``, as
  torch.optim.lr_scheduler.OneCycleLR with its defaults. Departure: momentum is not
  cycled.
- ``cosine``: Loshchilov & Hutter (2017), SGDR without restarts: a linear warm-up from
  0, then a cosine fall to 0.
- ``step``: a linear warm-up, then ``lr`` times ``gamma`` at each milestone (He et al.
  2016 divided by 10 at 50% and 75% of the run).
- ``constant``: a linear warm-up, then ``lr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError

SCHEDULES = ("onecycle", "cosine", "step", "constant")
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


@dataclass
class Schedule:
    """The learning-rate multiplier at each step of a run of ``total_steps`` steps.

    ``warmup`` and ``milestones`` are fractions of the run in [0, 1).
    """

    name: str
    total_steps: int
    warmup: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(
                f"unknown schedule {self.name!r}; expected one of {', '.join(SCHEDULES)}"
            )
        if self.total_steps < 1:
            raise ConfigError(f"a schedule needs at least one step, got {self.total_steps}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warm-up must be under the whole run, got fraction {self.warmup}")

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup * self.total_steps))

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate for the update made at ``step`` (from 0)."""
        total = self.total_steps
        step = min(max(step, 0), total - 1)
        warm = self.warmup_steps
        if self.name == "onecycle":
            low = 1.0 / ONECYCLE_DIV
            end = low / ONECYCLE_FINAL_DIV
            if warm > 0 and step < warm:
                return _cos_between(low, 1.0, step / warm)
            rest = max(total - 1 - warm, 1)
            return _cos_between(1.0, end, (step - warm) / rest)
        if warm > 0 and step < warm:
            return (step + 1) / (warm + 1)
        if self.name == "cosine":
            rest = max(total - warm, 1)
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / rest))
        if self.name == "step":
            progress = step / total
            return self.gamma ** sum(progress >= m for m in self.milestones)
        return 1.0

    def state_dict(self) -> dict:
        return {
            "name": self.name,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Schedule:
        return cls(
            name=state["name"],
            total_steps=int(state["total_steps"]),
            warmup=float(state["warmup"]),
            milestones=[float(m) for m in state["milestones"]],
            gamma=float(state["gamma"]),
        )


def fit_steps(
    avail: float,
    step_s: float,
    epoch_end_s: float,
    *,
    done: int,
    steps_per_epoch: int,
    save_s: float = 0.0,
    save_every: int = 0,
) -> int:
    """The largest total S >= ``done`` whose remaining cost fits in ``avail`` seconds.

    The cost of going from ``done`` to S steps is ``step_s`` a step, ``epoch_end_s`` at
    each epoch end reached (every ``steps_per_epoch`` steps, and at S itself), and
    ``save_s`` at every ``save_every`` steps.
    """
    spe = steps_per_epoch

    def cost(s: int) -> float:
        if s <= done:
            return 0.0
        ends = math.ceil(s / spe) - done // spe
        saves = (s // save_every - done // save_every) if save_every else 0
        return (s - done) * step_s + ends * epoch_end_s + saves * save_s

    lo, hi = done, done + max(int(avail / max(step_s, 1e-9)), 0)
    while lo < hi:  # cost grows with s: binary search for the last s that fits
        mid = (lo + hi + 1) // 2
        if cost(mid) <= avail:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cos_between(start: float, end: float, t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def as_fraction(value: float, epochs: float, what: str) -> float:
    """A warm-up or milestone given in epochs (>= 1) or as a fraction of the run (< 1)."""
    if value < 0:
        raise ConfigError(f"{what} must not be negative, got {value}")
    if value < 1:
        return float(value)
    frac = value / epochs
    if frac >= 1:
        raise ConfigError(f"{what} of {value:g} epochs does not fit in a run of {epochs:g} epochs")
    return frac
