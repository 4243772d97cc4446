"""Devices: which one a run uses, waiting for it, and the CPU cores this process may use.

``resolve_device`` turns ``--device auto|cpu|cuda`` into a :class:`torch.device`;
``synchronize`` waits for queued GPU work (a no-op on the CPU), so that a clock read
after it measures the work.

OpenMP threads that share cores with other busy processes wait for each other at every
parallel region: on a 2-core machine with one other busy process, 2-thread training
runs several times slower than 1-thread training. ``busy_machine_warning`` says so
before a run starts.
"""

from __future__ import annotations

import os
import time

import torch

from .errors import ConfigError

PROC_STAT = "/proc/stat"


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """The device of ``--device name``; with ``local_rank``, CUDA means ``cuda:local_rank``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for, but PyTorch sees no CUDA device")
    if name == "cuda" and local_rank is not None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(
                f"LOCAL_RANK {local_rank} has no GPU: this machine shows {count}; start at most "
                f"{count} processes per machine (torchrun --nproc-per-node {count})"
            )
        return torch.device("cuda", local_rank)
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done (CUDA); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available_cores() -> int:
    """The CPUs this process may run on (all cores unless restricted, e.g. by taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks spent so far by the given CPUs, from /proc/stat."""
    busy = total = 0
    try:
        with open(PROC_STAT) as f:
            for line in f:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if int(name[3:]) not in cpus:
                    continue
                ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq ...
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def busy_cores(seconds: float = 0.15) -> float | None:
    """How many of this process's cores other processes keep busy, sampled over ``seconds``.

    None where the kernel does not say (no /proc/stat).
    """
    try:
        cpus = set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return None
    before, own_before = _cpu_jiffies(cpus), os.times()
    time.sleep(seconds)
    after, own_after = _cpu_jiffies(cpus), os.times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    busy_share = (after[0] - before[0]) / (after[1] - before[1])  # of all these cores' time
    elapsed = own_after.elapsed - own_before.elapsed
    own = (own_after.user + own_after.system) - (own_before.user + own_before.system)
    own_cores = own / elapsed if elapsed > 0 else 0.0
    return max(0.0, busy_share * len(cpus) - own_cores)


def busy_machine_warning(threads: int) -> str | None:
    """A one-line warning when other work leaves fewer than ``threads`` cores free."""
    others = busy_cores()
    if others is None:
        return None
    cores = available_cores()
    if others < 0.5 or others + threads <= cores + 0.25:
        return None
    plural = "s" if threads > 1 else ""
    return (
        f"this machine is busy: other processes keep {others:.1f} of its {cores} cores "
        f"busy and this run wants {threads} thread{plural}; training will be slower and a "
        "--time-budget run will do fewer steps (fewer --threads helps)"
    )


def available_memory() -> int:
    """Bytes of memory this process can still take: ``MemAvailable`` of /proc/meminfo
    (Linux), else the machine's physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 1 << 40
