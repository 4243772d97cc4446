"""Reports of training runs: plots (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

__all__ = ["plot_confusion", "plot_curves"]


def __getattr__(name: str):
    if name in ("plot_curves", "plot_confusion"):
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
