"""Counts of what the reliability tests tried, printed as one line at the end of a run.

Every test here adds to :data:`TALLY` (via the ``tally`` fixture): kills survived by
phase, corrupt inputs refused by kind. ``pytest tests/reliability`` ends with a line

    reliability: 12 kills survived (...); 1234 corrupt inputs refused (...); 0 lost

and, when ``$CONVZOO_RELIABILITY_REPORT`` names a file, writes the counts there as JSON.
These are the figures SECURITY.md quotes.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

TALLY: Counter = Counter()


@pytest.fixture
def tally() -> Counter:
    """The session's counter; keys are ``"kill:<phase>"``, ``"input:<kind>"``, ``"lost"``."""
    return TALLY


def summary_line(counts: Counter) -> str:
    kills = {k[5:]: v for k, v in sorted(counts.items()) if k.startswith("kill:")}
    inputs = {k[6:]: v for k, v in sorted(counts.items()) if k.startswith("input:")}
    parts = []
    if kills:
        detail = ", ".join(f"{v} {k}" for k, v in kills.items())
        parts.append(f"{sum(kills.values())} kills survived ({detail})")
    if inputs:
        detail = ", ".join(f"{k} {v}" for k, v in inputs.items())
        parts.append(f"{sum(inputs.values())} corrupt or hostile inputs refused ({detail})")
    parts.append(f"{counts.get('lost', 0)} checkpoints lost or unreadable")
    return "reliability: " + "; ".join(parts)


def pytest_terminal_summary(terminalreporter) -> None:
    if not TALLY:
        return
    terminalreporter.write_line(summary_line(TALLY))
    report = os.environ.get("CONVZOO_RELIABILITY_REPORT")
    if report:
        with open(report, "w", encoding="utf-8") as f:
            json.dump(dict(sorted(TALLY.items())), f, indent=2)
            f.write("\n")
