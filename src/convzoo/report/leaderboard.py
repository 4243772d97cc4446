"""The leaderboard: one row per run, best test accuracy first, as data and as Markdown.

Every figure but the inference speed comes from the run's ``result.json``: test
accuracy, best validation accuracy, parameters, multiply-adds (per image, at the
run's input size), the run's wall time and its epochs. The speed (images per second,
batches of 64 at the run's input size) is measured on the machine making the report.
"""

from __future__ import annotations

import datetime
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..device import available_cores
from ..units import format_duration, human
from .runs import Run

__all__ = [
    "COLUMNS",
    "Entry",
    "format_duration",
    "format_markdown",
    "leaderboard",
    "machine_description",
    "report_date",
    "software_versions",
]


@dataclass
class Entry:
    """One row of the leaderboard."""

    rank: int
    label: str
    model: str
    run_dir: Path
    test_accuracy: float | None
    best_val_accuracy: float | None
    params: int | None
    macs: int | None
    wall_seconds: float | None  # the whole training run, as result.json records it
    train_seconds: float | None  # optimizer steps only
    epochs: float | None
    images_per_second: float | None
    speed_backend: str | None


# (attribute, heading, Markdown alignment)
COLUMNS = (
    ("rank", "#", "--:"),
    ("label", "model", ":--"),
    ("test_accuracy", "test acc.", "--:"),
    ("best_val_accuracy", "best val. acc.", "--:"),
    ("params", "params", "--:"),
    ("macs", "mult-adds", "--:"),
    ("wall_seconds", "training time", "--:"),
    ("epochs", "epochs", "--:"),
    ("images_per_second", "images/s", "--:"),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def leaderboard(runs: list[Run], speeds: dict[str, dict | None] | None = None) -> list[Entry]:
    """Entries for ``runs``, sorted by test accuracy (then validation accuracy, then name).

    ``speeds`` maps a run's label to the dict of :func:`analysis.measure_speed` (or None).
    """
    speeds = speeds or {}

    def key(run: Run):
        test = _number(run.result.get("test_accuracy"))
        val = _number(run.result.get("best_val_accuracy"))
        return (
            -(test if test is not None else -1.0),
            -(val if val is not None else -1.0),
            run.label,
        )

    entries = []
    for rank, run in enumerate(sorted(runs, key=key), start=1):
        r = run.result
        speed = speeds.get(run.label) or {}
        wall = _number(r.get("wall_seconds"))
        entries.append(
            Entry(
                rank=rank,
                label=run.label,
                model=run.model,
                run_dir=run.path,
                test_accuracy=_number(r.get("test_accuracy")),
                best_val_accuracy=_number(r.get("best_val_accuracy")),
                params=_number(r.get("params")),
                macs=_number(r.get("macs")),
                wall_seconds=wall if wall is not None else _number(r.get("train_seconds")),
                train_seconds=_number(r.get("train_seconds")),
                epochs=_number(r.get("epochs")),
                images_per_second=_number(speed.get("images_per_second")),
                speed_backend=speed.get("backend"),
            )
        )
    return entries


# ---------------------------------------------------------------------------------------
# Formatting (shared with the HTML report)


def format_cell(attr: str, value: Any) -> str:
    """How a leaderboard value is shown; an em dash when there is none."""
    if value is None:
        return "—"
    if attr in ("test_accuracy", "best_val_accuracy"):
        return f"{value * 100:.2f}%"
    if attr in ("params", "macs"):
        return human(value)
    if attr in ("wall_seconds", "train_seconds"):
        return format_duration(value)
    if attr == "epochs":
        return f"{value:g}" if value == int(value) else f"{value:.2f}"
    if attr == "images_per_second":
        return f"{value:,.0f}"
    return str(value)


def report_date() -> str:
    """Now, in local time with its offset: '2025-06-01 14:03 +0200'."""
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %z")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(device: str = "cpu") -> str:
    """'Intel(R) Xeon(R) ..., 16 cores, Linux 6.1 (x86_64)', plus the GPU when it is used."""
    import torch

    n = available_cores()
    text = (
        f"{_cpu_name()}, {n} core{'s' if n != 1 else ''} usable, "
        f"{platform.system()} {platform.release()} ({platform.machine()})"
    )
    if str(device).startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def software_versions() -> dict[str, str]:
    """Versions of Python, convzoo and the libraries the figures depend on."""
    from importlib import metadata

    from .. import __version__

    out = {"python": platform.python_version(), "convzoo": __version__}
    for name in ("torch", "numpy", "matplotlib", "pillow", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["platform"] = platform.platform()
    return out


def speed_note(entries: list[Entry]) -> str:
    """Which backend timed the images/s column."""
    backends = sorted({e.speed_backend for e in entries if e.speed_backend})
    if not backends:
        return "images/s: not measured"
    return f"images/s: batches of 64 at the run's input size, {' / '.join(backends)} backend"


def format_markdown(
    entries: list[Entry],
    *,
    command: str | None = None,
    date: str | None = None,
    machine: str | None = None,
    datasets: list[str] | None = None,
    threads: int | None = None,
) -> str:
    """The leaderboard as a Markdown document: a short header, then the table."""
    import torch

    date = date or report_date()
    machine = machine or machine_description()
    command = command or "convzoo " + " ".join(sys.argv[1:])
    threads = threads or torch.get_num_threads()
    lines = [
        "# convzoo leaderboard",
        "",
        f"- date: {date}",
        f"- machine: {machine}; torch {torch.__version__}, {threads} threads for inference",
        f"- command: `{command}`",
    ]
    if datasets:
        lines.append(f"- dataset: {', '.join(sorted(set(datasets)))}")
    lines += [
        f"- {speed_note(entries)}; training time is each run's wall time (result.json)",
        "",
        "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|" + "|".join(a for _, _, a in COLUMNS) + "|",
    ]
    for e in entries:
        cells = []
        for attr, _, _ in COLUMNS:
            value = getattr(e, attr)
            text = format_cell(attr, value) if attr != "label" else value
            cells.append(str(text).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
