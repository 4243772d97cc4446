"""One owner per run directory, new runs only in empty folders, and stop signals
honoured in the final phase (the run stops with its checkpoint, --resume finishes it)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from convzoo.artifacts import load_checkpoint
from convzoo.cli import main

from .test_kill_resume import PAUSE, STEPS_PER_EPOCH, Watched, train_args


@pytest.fixture
def data(tmp_path) -> Path:
    from conftest import write_idx_dataset

    return write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=200, n_test=40).parent


def short_args(data: Path, epochs: int = 2) -> list[str]:
    args = train_args(data)
    args[args.index("--epochs") + 1] = str(epochs)
    return args


@pytest.mark.slow
def test_a_second_process_cannot_take_a_run_in_use(data, tmp_path):
    """Two real processes: while one trains in RUN, `--resume RUN` from another is
    refused with one line (exit 2); once the first is gone, the run resumes."""
    run = tmp_path / "run"
    first = Watched([*short_args(data), "--out", str(run)], pause="update:2:120")
    assert first.wait_for("update", 2), first.other  # paused in a step, holding the lock
    second = Watched(["train", "nin", "--resume", str(run), "--quiet"])
    assert second.finish() == 2
    errors = [line for line in second.other if line.strip()]
    assert len(errors) == 1 and "in use by another convzoo process" in errors[0], errors
    assert first.proc.poll() is None  # still paused, holding the lock
    assert first.kill() == -signal.SIGKILL
    # the lock went with its process (however it ended): the run can be resumed now
    done = Watched(["train", "nin", "--resume", str(run), "--quiet"])
    assert done.finish() == 0, done.other
    assert json.loads((run / "result.json").read_text())["steps"] == 2 * STEPS_PER_EPOCH


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_in_the_final_evaluation_stops_the_run(data, tmp_path, sig):
    """The first signal during the final test pass is not ignored: the run stops with
    its checkpoint and exit status 128+signum, and --resume finishes it."""
    run = tmp_path / "run"
    watched = Watched([*short_args(data), "--out", str(run)], pause=f"test-batch:1:{PAUSE}")
    assert watched.wait_for("test-batch", 1), watched.other
    watched.proc.send_signal(sig)
    assert watched.finish() == 128 + sig, watched.other
    assert any("in the final evaluation" in line for line in watched.other), watched.other
    assert not (run / "result.json").exists() and not (run / "model.safetensors").exists()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2 * STEPS_PER_EPOCH
    done = Watched(["train", "nin", "--resume", str(run), "--quiet"])
    assert done.finish() == 0, done.other
    result = json.loads((run / "result.json").read_text())
    assert result["resumed"] is True and result["steps"] == 2 * STEPS_PER_EPOCH


@pytest.mark.slow
@pytest.mark.parametrize("what", ["user-file", "config-only", "dot"])
def test_a_new_run_needs_an_empty_folder(data, tmp_path, monkeypatch, capsys, what):
    out = tmp_path / "out"
    out.mkdir()
    if what == "user-file":
        (out / "notes.txt").write_text("mine")
    elif what == "config-only":  # a user's config.json, no run beside it
        (out / "config.json").write_text("{}")
    else:
        (out / "notes.txt").write_text("mine")
        monkeypatch.chdir(out)
    target = "." if what == "dot" else str(out)
    assert main([*short_args(data, 1), "--out", target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty" in err[0] and "another --out" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt"] if what != "config-only" else ["config.json"]
    )


@pytest.mark.slow
def test_an_empty_folder_or_a_lock_file_alone_is_fine(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".convzoo.lock").write_text("123\n")  # left by a process that ended
    assert main([*short_args(data, 1), "--limit-train", "32", "--out", str(out)]) == 0
    assert (out / "result.json").exists()
