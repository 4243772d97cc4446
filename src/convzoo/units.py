"""Numbers for people: sizes, byte counts and durations, read and written one way.

``human(1234567)`` is '1.23M', ``gib(2.5e9)`` is '2.3 GiB', ``format_duration(3725)``
is '1h02m05s', and ``parse_duration('1h30m')`` is 5400.0 (the ``--time-budget`` syntax).
"""

from __future__ import annotations

import math
import re

from .errors import ConfigError


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def gib(n: float) -> str:
    """Bytes as GiB for a message: 2.5e9 -> '2.3 GiB'."""
    return f"{n / 2**30:,.1f} GiB"


_DURATION = re.compile(
    r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)


def parse_duration(text: str) -> float:
    """'90s', '5m', '1h30m', '1.5h' or plain seconds ('300') -> seconds (> 0)."""
    raw = str(text).strip().lower().replace(" ", "")
    seconds: float | None = None
    try:
        seconds = float(raw)
    except ValueError:
        match = _DURATION.match(raw)
        if match and any(match.groupdict().values()):
            parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
            seconds = parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            f"time budget must look like 90s, 5m, 1h30m or plain seconds, got {text!r}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """61.5 -> '1m01s'; 3725 -> '1h02m05s'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"
