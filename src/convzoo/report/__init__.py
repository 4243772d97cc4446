"""Reports of training runs: plots (matplotlib, imported only when a plot is drawn), the
leaderboard, and the HTML report (a view model rendered by a Jinja2 template)."""

from __future__ import annotations

__all__ = ["plot_confusion", "plot_curves", "write_run_files"]


def __getattr__(name: str):
    if name in ("plot_curves", "plot_confusion"):
        from . import plots

        return getattr(plots, name)
    if name == "write_run_files":
        from .run_files import write_run_files

        return write_run_files
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
