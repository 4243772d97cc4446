"""Shared helpers for the benchmarks: the machine's description and RESULTS.md rows."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """The CPU with its native bf16/int8 paths, cores, GPU, OS, Python and torch."""
    import torch

    from convzoo.lowp import describe_precisions

    gpu = ""
    if torch.cuda.is_available():
        gpu = f", {torch.cuda.get_device_name(0)}"
    return (
        f"{describe_precisions()}; {os.cpu_count()} cores{gpu}, {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def append_section(title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
    """Append a dated table to RESULTS.md under its own heading."""
    today = _dt.date.today().isoformat()
    lines = [
        "",
        f"## {title} ({today})",
        "",
        f"Machine: {machine()}  ",
        f"Command: `{command()}`",
    ]
    if note:
        lines += ["", note]
    lines += [
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n")
