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
    """'AMD EPYC, 2 cores, Linux x86_64, torch 2.13.0+cpu' and the like."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if torch.cuda.is_available():
        gpu = f", {torch.cuda.get_device_name(0)}"
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
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
