"""The busy-machine check: other processes' load on this process's cores."""

import collections
import subprocess
import sys
import time

import pytest

from convzoo import device as cores


@pytest.mark.parametrize(
    "others, threads, warned",
    [
        (0.1, 2, False),  # quiet
        (1.0, 1, False),  # one core busy, one thread asked: it fits
        (1.0, 2, True),  # one core busy, both asked
        (2.0, 1, True),  # both cores busy
        (None, 2, False),  # the kernel does not say
    ],
)
def test_busy_machine_warning(monkeypatch, others, threads, warned):
    monkeypatch.setattr(cores, "busy_cores", lambda: others)
    monkeypatch.setattr(cores, "available_cores", lambda: 2)
    line = cores.busy_machine_warning(threads)
    assert (line is not None) == warned
    if warned:
        assert f"keep {others:.1f} of its 2 cores busy" in line and "\n" not in line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_busy_cores_sees_another_busy_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        assert cores.busy_cores(0.5) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()


def test_own_work_is_subtracted(monkeypatch):
    Times = collections.namedtuple("Times", "user system elapsed")
    ticks = iter([(100, 1000), (200, 1200)])  # 100 of 200 ticks busy: 1 of 2 cores
    times = iter([Times(1.0, 0.0, 10.0), Times(1.4, 0.1, 11.0)])  # this process: 0.5 core
    monkeypatch.setattr(cores, "_cpu_jiffies", lambda cpus: next(ticks))
    monkeypatch.setattr(cores.os, "times", lambda: next(times))
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cores.time, "sleep", lambda seconds: None)
    assert cores.busy_cores() == pytest.approx(0.5)


def test_no_proc_stat_means_no_figure(monkeypatch, tmp_path):
    monkeypatch.setattr(cores, "PROC_STAT", str(tmp_path / "missing"))
    assert cores.busy_cores(0.01) is None
    assert cores.busy_machine_warning(8) is None
