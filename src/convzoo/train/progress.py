"""Progress display: a live bar on a terminal, one plain line per epoch otherwise.

Loss and accuracy are accumulated as tensors on the training device; they are read
(one host synchronisation) only when the bar is redrawn, a few times a second.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import torch

from ..units import format_duration

REFRESH_SECONDS = 0.5


class Progress:
    """Draws the training progress of a run on ``stream`` (stderr by default)."""

    def __init__(self, epochs: int, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.epochs = epochs
        self.live = not quiet and _isatty(self.stream)
        self._last_draw = 0.0
        self._drawn = False

    def info(self, line: str) -> None:
        """A line of information (not shown with --quiet)."""
        if not self.quiet:
            self._clear()
            print(line, file=self.stream, flush=True)

    def warn(self, line: str) -> None:
        """A warning, always shown."""
        self._clear()
        print(f"warning: {line}", file=self.stream, flush=True)

    def step(
        self,
        epoch: int,
        batch: int,
        batches: int,
        loss_sum: torch.Tensor,
        correct: torch.Tensor,
        seen: int,
        seconds: float,
    ) -> None:
        """Called after every step; redraws the bar a few times a second on a terminal."""
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last_draw < REFRESH_SECONDS and batch < batches:
            return
        self._last_draw = now
        loss = float(loss_sum) / max(seen, 1)
        acc = float(correct) / max(seen, 1)
        speed = seen / seconds if seconds > 0 else 0.0
        eta = (batches - batch) * seconds / batch if batch > 0 else 0.0
        bar = "#" * int(batch / max(batches, 1) * 24)
        line = (
            f"\repoch {epoch}/{self.epochs} [{bar:<24}] {batch}/{batches} "
            f"loss {loss:.4f} acc {acc:6.2%} {speed:,.0f} img/s ETA {format_duration(eta)}"
        )
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def epoch_end(self, row: dict, epochs: int) -> None:
        """One line per epoch (on a terminal it replaces the bar)."""
        if self.quiet:
            return
        self._clear()
        val = (
            f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.2%}"
            if row.get("val_accuracy") is not None
            else ""
        )
        print(
            f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.2%}{val}  lr {row['lr']:.3g}  "
            f"{row['seconds']:.1f}s  {row['images_per_second']:,.0f} img/s",
            file=self.stream,
            flush=True,
        )

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
