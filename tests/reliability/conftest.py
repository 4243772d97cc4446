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


class Tally(Counter):
    """Counts keyed ``"kill:<phase>"``, ``"input:<kind>"`` (tried), ``"refused:<kind>"``
    and ``"lost"`` (checkpoints found unreadable after a kill)."""

    def input(self, kind: str, refused: bool = True) -> None:
        self[f"input:{kind}"] += 1
        if refused:
            self[f"refused:{kind}"] += 1

    def kill(self, phase: str, count: int = 1) -> None:
        self[f"kill:{phase}"] += count

    def lost(self, count: int) -> None:
        self["lost"] += count


TALLY = Tally()


@pytest.fixture
def tally() -> Tally:
    """The session's :class:`Tally`."""
    return TALLY


def summary_line(counts: Counter) -> str:
    kills = {k[5:]: v for k, v in sorted(counts.items()) if k.startswith("kill:")}
    tried = {k[6:]: v for k, v in sorted(counts.items()) if k.startswith("input:")}
    parts = []
    if kills:
        detail = ", ".join(f"{v} {k}" for k, v in kills.items())
        parts.append(f"{sum(kills.values())} kills survived ({detail})")
    if tried:
        refused = {k: counts.get(f"refused:{k}", 0) for k in tried}
        detail = ", ".join(f"{k} {v}/{refused[k]}" for k, v in tried.items())
        parts.append(
            f"{sum(tried.values())} corrupt or hostile inputs tried, "
            f"{sum(refused.values())} refused (kind tried/refused: {detail})"
        )
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


@pytest.fixture(autouse=True)
def no_busy_check(monkeypatch):
    """The commands these tests start make no busy-machine check: its warning is an
    extra stderr line on a loaded machine, and the tests count stderr lines."""
    from convzoo.train.setup import NO_BUSY_CHECK

    monkeypatch.setenv(NO_BUSY_CHECK, "1")
