"""Fault injection: `convzoo train` killed with SIGKILL at random instants, resumed.

A real training run (a tiny NiN on the synthetic Fashion-MNIST of tests/conftest.py,
--deterministic, one thread, a checkpoint every step) is started as a subprocess and
killed with SIGKILL again and again: during a training step, during evaluation, while
a checkpoint's temporary file is half written, between a whole temporary file and its
rename, and at random instants of start-up. After every kill each checkpoints/*.pt
must load with load_checkpoint, last.pt must never go back in time, and the next
start (`--resume`, or the original command when no checkpoint was written yet) must
carry on. At the end the run must complete and its final weights (and EMA weights,
metrics and test accuracy) must equal an uninterrupted run's, bit for bit.

The subprocess is ``python tests/reliability/probe.py train ...``: ``python -m
convzoo train ...`` plus markers on stderr saying where it is (training step,
evaluation, checkpoint write, rename) and an optional pause at one of them, which is
how kills land inside a checkpoint write reliably; see probe.py. The kill instants
are drawn from a seeded generator ($CONVZOO_KILL_SEED, default 0).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from convzoo.artifacts import load_checkpoint
from convzoo.cli import main
from convzoo.errors import CheckpointError

PROBE = Path(__file__).with_name("probe.py")
SEED = int(os.environ.get("CONVZOO_KILL_SEED", "0"))
# Ten kills in a seeded order: two in the middle of a training step, two during an
# evaluation, two with a checkpoint's temporary file half written, one between a whole
# temporary file and its rename (each in a pause the probe makes there), and three at
# random instants: one during start-up, two anywhere in training.
KINDS = ["step", "step", "eval", "eval", "write", "write", "rename", "startup", "anywhere",
         "anywhere"]  # fmt: skip
PROBED = {"step": "update", "eval": "eval-batch", "write": "write-half", "rename": "rename"}
PAUSE = 0.8  # seconds the probe waits at a chosen marker, for the kill to land in
PHASES = {
    None: "start-up",
    "step": "training step",
    "update": "training step",
    "eval": "evaluation",
    "eval-batch": "evaluation",
    "write": "checkpoint write",
    "write-half": "checkpoint write",
    "rename": "checkpoint rename",
    "renamed": "bookkeeping",
    "eval-done": "bookkeeping",
    "test": "final evaluation",
    "test-batch": "final evaluation",
    "write-model": "final write",
    "write-result": "final write",
}
# long enough that ten kills (each lets a process progress a few steps at most) never
# reach the end of the run
EPOCHS, STEPS_PER_EPOCH = 12, 3


def train_args(data: Path) -> list[str]:
    return ["train", "nin", "--data-dir", str(data), "--width", "0.125",
            "--limit-train", str(32 * STEPS_PER_EPOCH), "--val-size", "64",
            "--batch-size", "32", "--epochs", str(EPOCHS), "--deterministic",
            "--threads", "1", "--ema", "0.9", "--flip", "--save-every-steps", "1",
            "--recipe", "none", "--quiet"]  # fmt: skip


class Watched:
    """A probed `convzoo` subprocess whose stderr markers are collected as they come."""

    def __init__(self, argv: list[str], pause: str = "") -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CONVZOO_PROBE_PAUSE": pause}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(PROBE), *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.markers: list[str] = []
        self.other: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            if line.startswith("@@probe "):
                self.markers.append(line.split()[1])
            else:
                self.other.append(line.rstrip("\n"))

    def wait_for(self, marker: str, n: int, timeout: float = 120) -> bool:
        """True once the ``n``-th ``marker`` is seen; False if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.markers.count(marker) >= n:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.002)
        raise AssertionError(f"no {marker} #{n} within {timeout}s; stderr: {self.other}")

    def alive_after(self, seconds: float) -> bool:
        """True if the process still runs ``seconds`` after it was started."""
        while time.monotonic() < self.started + seconds:
            if self.proc.poll() is not None:
                return False
            time.sleep(0.002)
        return self.proc.poll() is None

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.finish()

    def finish(self) -> int:
        code = self.proc.wait(timeout=300)
        self.reader.join(timeout=30)
        return code

    @property
    def phase(self) -> str:
        return PHASES[self.markers[-1] if self.markers else None]


def check_checkpoints(run: Path) -> tuple[int, int]:
    """Load every checkpoints/*.pt; return (step of last.pt or -1, unreadable files)."""
    lost, step = 0, -1
    for path in sorted((run / "checkpoints").glob("*.pt")):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError:
            lost += 1
            continue
        if path.name == "last.pt":
            step = int(ckpt["step"])
    return step, lost


def weights(run: Path) -> dict:
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    return {"model": ckpt["model"], "ema": ckpt["ema"], "step": ckpt["step"]}


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bitwise_equal(tmp_path, tally, capsys):
    from conftest import write_idx_dataset

    data = write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=200, n_test=40).parent
    reference = tmp_path / "reference"
    assert main([*train_args(data), "--out", str(reference)]) == 0
    capsys.readouterr()
    total = EPOCHS * STEPS_PER_EPOCH
    assert weights(reference)["step"] == total

    run = tmp_path / "run"
    fresh = [*train_args(data), "--out", str(run)]
    rng = random.Random(SEED)
    plan = rng.sample(KINDS, len(KINDS))
    kills: Counter = Counter()
    log = []
    last_step = -1
    for kind in plan:
        has_checkpoint = any((run / "checkpoints").glob("*.pt"))
        argv = ["train", "nin", "--resume", str(run), "--quiet"] if has_checkpoint else fresh
        n = 1 if kind == "eval" else rng.randint(1, 2)  # the first evaluation: its epoch's end
        if kind == "startup":
            watched = Watched(argv)
            reached, delay = watched.alive_after(rng.uniform(0.2, 3.0)), 0.0
        elif kind == "anywhere":
            watched = Watched(argv)
            reached, delay = watched.wait_for("step", 1), rng.uniform(0, 0.5)
        else:
            marker = PROBED[kind]
            watched = Watched(argv, pause=f"{marker}:{n}:{PAUSE}")
            reached, delay = watched.wait_for(marker, n), rng.uniform(0, PAUSE / 2)
        assert reached, f"{kind}: the process ended first: {watched.other}; so far {log}"
        time.sleep(delay)
        code = watched.kill()
        assert code == -signal.SIGKILL, (kind, code, watched.other)
        step, lost = check_checkpoints(run)
        tally.lost(lost)
        assert lost == 0, f"unreadable checkpoint after a kill in {watched.phase}"
        assert step >= last_step, f"last.pt went back from step {last_step} to {step}"
        last_step = step
        kills[watched.phase] += 1
        log.append((kind, watched.phase, step))

    done = Watched(["train", "nin", "--resume", str(run), "--quiet"])
    assert done.finish() == 0, done.other
    assert check_checkpoints(run) == (total, 0)
    print(f"kill-resume (seed {SEED}): " + ", ".join(f"{k}->{p}@{s}" for k, p, s in log))

    # the killed-and-resumed run ends exactly where the uninterrupted one does
    a, b = weights(reference), weights(run)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert metrics(run) == metrics(reference)
    result_a = json.loads((reference / "result.json").read_text())
    result_b = json.loads((run / "result.json").read_text())
    assert result_b["test_accuracy"] == result_a["test_accuracy"] and result_b["steps"] == total
    from convzoo.export import load_safetensors

    exported = load_safetensors(run / "model.safetensors").state_dict()
    for k, v in b["ema"].items():
        assert torch.equal(exported[k], v), k
    # no temporary file of a killed writer is left behind
    assert sorted(p.name for p in run.rglob("*.tmp")) == []

    assert sum(kills.values()) >= 10
    for phase in ("training step", "evaluation", "checkpoint write"):
        assert kills[phase] >= 2, (phase, log)
    for phase, count in kills.items():
        tally.kill(phase, count)


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, capsys):
    """What a kill during start-up leaves (config.json, an empty checkpoints/ and a
    half-written temporary file): --resume says there is nothing to resume, and the
    original command starts the run again instead of refusing the directory."""
    from conftest import write_idx_dataset

    data = write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=100, n_test=10).parent
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "nin", "dataset": "fashion-mnist"}))
    stale = run / "checkpoints" / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    assert main(["train", "nin", "--resume", str(run), "--quiet"]) == 2
    assert "no usable checkpoint" in capsys.readouterr().err
    argv = [*train_args(data), "--out", str(run)]
    argv[argv.index("--epochs") + 1] = "1"
    argv[argv.index("--limit-train") + 1] = "32"
    assert main(argv) == 0, capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1
    assert not stale.exists()  # removed once a newer checkpoint was in place
    # a finished run is still never overwritten
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


FINAL_EPOCHS = 2  # a short run: the kills below land after its last step


@pytest.mark.slow
@pytest.mark.parametrize(
    "marker", ["test-batch", "write-model", "write-result"], ids=["test", "model", "result"]
)
def test_sigkill_in_the_final_phase_then_resume_finishes_it(tmp_path, tally, capsys, marker):
    """Killed during the final test evaluation, or between a whole model.safetensors or
    result.json and its rename: --resume redoes the final evaluation and writing, and the
    run ends as an uninterrupted one."""
    from conftest import write_idx_dataset

    data = write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=200, n_test=40).parent
    args = train_args(data)
    args[args.index("--epochs") + 1] = str(FINAL_EPOCHS)
    reference = tmp_path / "reference"
    assert main([*args, "--out", str(reference)]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    watched = Watched([*args, "--out", str(run)], pause=f"{marker}:1:{PAUSE}")
    assert watched.wait_for(marker, 1), watched.other
    time.sleep(PAUSE / 4)
    assert watched.kill() == -signal.SIGKILL
    tally.kill(watched.phase)
    assert check_checkpoints(run) == (FINAL_EPOCHS * STEPS_PER_EPOCH, 0)
    assert not (run / "result.json").exists()
    done = Watched(["train", "nin", "--resume", str(run), "--quiet"])
    assert done.finish() == 0, done.other
    a, b = weights(reference), weights(run)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    result_a = json.loads((reference / "result.json").read_text())
    result_b = json.loads((run / "result.json").read_text())
    assert result_b["test_accuracy"] == result_a["test_accuracy"] and result_b["resumed"]
    assert sorted(p.name for p in run.rglob("*.tmp")) == []
