"""How a training option declares itself: a :class:`Number` range or a parser, and an
:class:`Option` (help, flag, group, choices) in a dataclass field's metadata.

:class:`convzoo.train.config.TrainConfig` declares each of its fields with
:func:`option`; flags, help, checks and command lines are derived from that.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Number:
    """The values a numeric option takes; the argparse type and :func:`check_config`
    both use it, so that the command line and a recipe accept the same numbers.

    Every value must be finite. ``low``/``high`` bound it (``None``: no bound), open
    (strict) unless ``low_closed``/``high_closed``; ``zero`` also admits 0 (e.g. EMA
    decay: 0 is off).
    """

    kind: type = float  # int or float
    low: float | None = 0
    low_closed: bool = False
    high: float | None = None
    high_closed: bool = False
    zero: bool = False

    def describe(self) -> str:
        """'a positive integer', 'a number >= 0', 'a number in [0, 1)', ..."""
        integer = self.kind is int
        if self.low == 0 and self.high is None and not self.zero:
            if not self.low_closed:
                return f"a positive {'integer' if integer else 'number'}"
            return f"a {'whole number' if integer else 'number'} >= 0"
        if integer and self.low_closed and self.high_closed:
            text = f"a whole number from {self.low} to {self.high}"
        elif self.high is None:
            text = f"a number {'>=' if self.low_closed else '>'} {self.low:g}"
        else:
            left, right = "[("[not self.low_closed], "])"[not self.high_closed]
            text = f"a number in {left}{self.low:g}, {self.high:g}{right}"
        return f"0 or {text}" if self.zero else text

    def problem(self, value: Any) -> str | None:
        """Why ``value`` cannot be used (None when it can)."""
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"must be {self.describe()}, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if self.zero and value == 0:
            return None
        too_low = self.low is not None and (
            value < self.low or (value == self.low and not self.low_closed)
        )
        too_high = self.high is not None and (
            value > self.high or (value == self.high and not self.high_closed)
        )
        if too_low or too_high:
            return f"must be {self.describe()}, got {value!r}"
        return None

    def convert(self, text: str) -> int | float:
        """The number written in ``text`` (ConfigError when there is none)."""
        try:
            return self.kind(text.strip())
        except (ValueError, OverflowError):
            raise ConfigError(f"must be {self.describe()}, got {text!r}") from None


POSITIVE_INT = Number(int)
POSITIVE = Number(float)
NON_NEGATIVE_INT = Number(int, low_closed=True)
NON_NEGATIVE = Number(float, low_closed=True)
FRACTION_BELOW_ONE = Number(float, low_closed=True, high=1)
PROBABILITY = Number(float, low_closed=True, high=1, high_closed=True)
SEED = Number(int, low_closed=True, high=2**63 - 1, high_closed=True)


@dataclass(frozen=True)
class Option:
    """How a :class:`TrainConfig` field appears on the command line and what it accepts.

    ``action``: ``"value"`` (``--flag VALUE``), ``"bool"`` (``--flag`` / ``--no-flag``),
    ``"store_true"`` (``--flag``), ``"append"`` (repeatable ``--flag VALUE``) or
    ``None`` (not a flag). ``parse`` turns text into a value before ``number`` checks it;
    ``extra`` checks what ``number`` cannot say (returns the problem or None).
    ``default_text`` is how ``--help`` states a default that is chosen at run time.
    """

    help: str
    group: str = "run"
    number: Number | None = None
    parse: Callable[[str], Any] | None = None
    extra: Callable[[Any], str | None] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    flag: str | None = None
    default_text: str | None = None
    action: str | None = "value"
    nargs: str | None = None
    const: Any = None
    exclusive: str | None = None  # the mutually exclusive set it belongs to

    def check(self, value: Any) -> str | None:
        """Why ``value`` cannot be used (None when it can); None values mean "choose"."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        if self.number is not None:
            problem = self.number.problem(value)
            if problem:
                return problem
        if self.action in ("bool", "store_true") and not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
        return self.extra(value) if self.extra else None


def option(default: Any = dataclasses.MISSING, *, factory=None, **kwargs) -> Any:
    """A dataclass field with its :class:`Option` in the metadata."""
    meta = {"option": Option(**kwargs)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)
