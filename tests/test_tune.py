"""convzoo tune end to end, with tiny trials (width 0.125, a slice of synthetic data,
one thread, seconds each): the SQLite default, pruning, best.toml, stopping and
resuming, and a throwaway PostgreSQL cluster shared by two workers, one of them killed.

PostgreSQL: the fixture runs ``initdb`` and ``pg_ctl`` (from PATH or Debian's
/usr/lib/postgresql/*/bin) into a temporary folder on a free localhost port, as the
unprivileged user ``nobody`` when the tests run as root, and stops the cluster at the
end. Without PostgreSQL binaries the tests fail under CI (``$CI`` set, as .ci/run
does) and are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

pytestmark = pytest.mark.slow

SPACE = """
lr = { low = 1e-6, high = 0.4, log = true }
label_smoothing = { low = 0.0, high = 0.1 }
width = { choices = [0.125] }
batch_size = { choices = [32] }
ema = { choices = [0.0] }
"""
TRIAL = ["--trial-budget", "10s", "--limit-train", "400", "--val-size", "150", "--threads", "1"]


@pytest.fixture
def tune_env(tmp_path, make_idx_dataset, data_env, monkeypatch):
    """A learnable synthetic Fashion-MNIST, the tiny space, and the environment a
    ``convzoo tune`` subprocess needs to find both and this checkout."""
    data = make_idx_dataset(tmp_path / "fmnist", n_train=600, n_test=60)
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    env = dict(os.environ, CONVZOO_DATA=str(data), PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    env.pop("CONVZOO_MIRROR", None)
    monkeypatch.setenv("CONVZOO_DATA", str(data))
    return env, space


def tune_argv(space: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "convzoo", "tune", "resnet18", *TRIAL,
            "--space", str(space), "--out", str(out), *extra]  # fmt: skip


def run_tune(env, space, out, *extra, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(tune_argv(space, out, *extra), env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def load(storage: str, name: str = "resnet18-fashion-mnist"):
    return optuna.load_study(study_name=name, storage=storage)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def wait_for_running(storage: str, name: str, proc, timeout: float = 60):
    """The first RUNNING trial of the study (polled while ``proc`` lives)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        with contextlib.suppress(Exception):
            running = load(storage, name).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if running:
                return running[0]
        time.sleep(0.3)
    raise AssertionError(f"no trial started; tune exited {proc.poll()}")


# ---------------------------------------------------------------------------- SQLite


def test_sqlite_default_pruning_best_toml_and_the_test_split_unread(tune_env, tmp_path):
    env, space = tune_env
    out = tmp_path / "study"
    first = run_tune(env, space, out, "--trials", "1", "--pruner", "median")
    assert first.returncode == 0, first.stderr
    assert "trial 0 complete" in first.stdout and "best" in first.stdout
    storage = f"sqlite:///{out / 'study.db'}"
    study = load(storage)
    (recipe_trial,) = study.get_trials()
    assert recipe_trial.user_attrs["queued"] == "recipe"
    assert recipe_trial.params["lr"] == 0.2  # the shipped recipe's
    # A hopeless trial (a learning rate too small to learn anything) is queued next;
    # running the same command with more trials continues the study.
    study.enqueue_trial(dict(recipe_trial.params, lr=1e-6))
    run = run_tune(env, space, out, "--trials", "2", "--pruner", "median")
    assert run.returncode == 0, run.stderr
    trials = load(storage).get_trials()
    assert [t.number for t in trials] == [0, 1]
    good, bad = trials
    assert good.state.name == "COMPLETE" and bad.state.name == "PRUNED"
    # It stopped early: no value at the end of its schedule, and fewer steps.
    assert max(bad.intermediate_values) < 100 <= max(good.intermediate_values)
    assert bad.user_attrs["stopped_at_percent"] < 100
    assert "trial 1 pruned" in run.stdout
    # Every trial's result.json says the test split was not evaluated.
    for t in trials:
        result = Path(t.user_attrs["run_dir"]) / "result.json"
        if result.exists():
            assert json.loads(result.read_text())["test_accuracy"] is None
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [(r["number"], r["state"]) for r in rows] == [(0, "COMPLETE"), (1, "PRUNED")]
    assert "optimization history" in (out / "report.html").read_text().lower()
    # best.toml trains as it is.
    best = out / "best.toml"
    assert "lr = " in best.read_text()
    from convzoo.cli import main

    # (one epoch instead of the recipe's time budget, which counts from the start of
    # this process)
    code = main(["train", "resnet18", "--recipe", str(best), "--out", str(tmp_path / "again"),
                 "--quiet", "--epochs", "1"])  # fmt: skip
    assert code == 0
    again = json.loads((tmp_path / "again" / "result.json").read_text())
    assert again["width"] == 0.125 and again["test_accuracy"] is not None
