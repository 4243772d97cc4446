"""Checkpoints on a full disk: a clear error, the previous checkpoint intact, no litter.

The disk is made "full" with a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so a
write past it fails with EFBIG, as a write to a full disk fails with ENOSPC) in a
subprocess, and with a file object that runs out of space part-way through.

Decision (documented in SECURITY.md): a checkpoint that cannot be written raises
CheckpointWriteError, a CheckpointError (so `convzoo train` prints one line and exits
with status 2, the status of a problem the user must fix) that is also an OSError with
the errno of the failure. The message names the file and the reason and says that the
previous checkpoint is unchanged.
"""

from __future__ import annotations

import errno
import io
import json
import os

import pytest
import torch

from convzoo import get_model
from convzoo.artifacts import CHECKPOINT_FORMAT as FORMAT
from convzoo.artifacts import CheckpointWriteError, load_checkpoint, save_checkpoint
from convzoo.artifacts import checkpoints as ck
from convzoo.train.setup import NO_BUSY_CHECK

from .common import run_limited

OPTIONS = {"num_classes": 10, "in_channels": 1, "small_input": True, "width": 0.125}


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.slow
def test_file_size_limit_keeps_the_previous_checkpoint(tmp_path, tally):
    path = tmp_path / "checkpoints" / "last.pt"
    code = f"""
import json, pathlib, torch
from convzoo.artifacts import CHECKPOINT_FORMAT as FORMAT, CheckpointWriteError, save_checkpoint
path = pathlib.Path({str(path)!r})
save_checkpoint({{"format": FORMAT, "step": 1, "w": torch.zeros(1000)}}, path)
try:
    save_checkpoint({{"format": FORMAT, "step": 2, "w": torch.zeros(100_000)}}, path)
    print(json.dumps({{"raised": None}}))
except CheckpointWriteError as exc:
    print(json.dumps({{"raised": str(exc), "errno": exc.errno}}))
"""
    proc = run_limited(code, fsize=64 * 1024)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["raised"] is not None, "a 400 kB checkpoint was written under a 64 kB limit"
    assert result["errno"] == errno.EFBIG
    message = result["raised"]
    assert str(path) in message and "File too large" in message
    assert "previous checkpoint is unchanged" in message and "\n" not in message
    assert load_checkpoint(path)["step"] == 1
    assert _leftovers(path.parent) == []
    tally.input("full disk")


class _SmallDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: writes past it fail with ENOSPC."""

    room = 0

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.parametrize("room", [0, 100, 5000, 50_000])
def test_no_space_left_part_way_through(tmp_path, monkeypatch, tally, room):
    path = tmp_path / "last.pt"
    torch.manual_seed(0)
    state = {"format": FORMAT, "step": 1, "model": get_model("nin", **OPTIONS).state_dict()}
    save_checkpoint(state, path)
    before = path.read_bytes()

    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        if "w" not in mode:
            return real_fdopen(fd, mode, *args, **kwargs)
        _SmallDisk.room = room
        return io.BufferedWriter(_SmallDisk(fd, "wb"))

    monkeypatch.setattr(ck.os, "fdopen", fdopen)
    with pytest.raises(CheckpointWriteError, match="No space left on device") as err:
        save_checkpoint({**state, "step": 2}, path)
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert _leftovers(tmp_path) == []
    tally.input("full disk")


@pytest.mark.slow
def test_convzoo_train_on_a_full_disk(tmp_path, tally):
    """`convzoo train` whose second checkpoint no longer fits: exit 2, one line, the
    first checkpoint intact and resumable from, no temporary file left."""
    from conftest import write_idx_dataset

    data = write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=100, n_test=20).parent
    # The first checkpoint (before any step) holds the weights; later ones also hold
    # SGD's momentum buffers, about as large again: a limit between the two.
    weights = io.BytesIO()
    torch.save(get_model("nin", **OPTIONS).state_dict(), weights)
    limit = int(weights.tell() * 1.5) + 16_384
    out = tmp_path / "run"
    argv = ["train", "nin", "--data-dir", str(data), "--width", "0.125", "--limit-train", "64",
            "--val-size", "20", "--batch-size", "32", "--epochs", "2", "--deterministic",
            "--threads", "1", "--save-every-steps", "1", "--recipe", "none", "--quiet",
            "--out", str(out)]  # fmt: skip
    code = f"import sys; from convzoo.cli import main; sys.exit(main({argv!r}))"
    proc = run_limited(code, fsize=limit, env={"CONVZOO_RECIPES": str(tmp_path / "none")})
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "cannot write the checkpoint" in err and "File too large" in err, err
    assert "previous checkpoint is unchanged" in err, err
    first = load_checkpoint(out / "checkpoints" / "last.pt")
    assert first["step"] == 0
    assert _leftovers(out / "checkpoints") == [] and _leftovers(out) == []
    tally.input("full disk")
    # with room again, the run resumes from it and completes
    from convzoo.cli import main

    assert main(["train", "nin", "--resume", str(out), "--quiet"]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4


@pytest.mark.slow
def test_convzoo_train_cannot_write_its_config(tmp_path, tally):
    """A disk too full for config.json: exit 2, one line naming the file, no litter."""
    from conftest import write_idx_dataset

    data = write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=100, n_test=20).parent
    out = tmp_path / "run"
    argv = ["train", "nin", "--data-dir", str(data), "--width", "0.125", "--limit-train", "64",
            "--val-size", "20", "--epochs", "1", "--threads", "1", "--recipe", "none",
            "--quiet", "--out", str(out)]  # fmt: skip
    code = f"import sys; from convzoo.cli import main; sys.exit(main({argv!r}))"
    # (no busy-machine check: its warning would be a second line on a loaded machine)
    proc = run_limited(code, fsize=256, env={NO_BUSY_CHECK: "1"})
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"cannot write {out / 'config.json'}" in err and "File too large" in err, err
    assert not (out / "config.json").exists() and _leftovers(out) == []
    tally.input("full disk")


def test_any_command_on_a_full_disk_says_so_in_one_line(monkeypatch, capsys, tally):
    """An OSError of a refusing file system (here ENOSPC from a report being written)
    reaches the user as one line and exit status 2, not a traceback."""
    from convzoo.cli import main, report_cmd

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/cmp/report.html")

    monkeypatch.setattr(report_cmd, "run", full)
    assert main(["report", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err == "convzoo report: error: No space left on device: /runs/cmp/report.html\n"
    tally.input("full disk")

    def bug(args):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(report_cmd, "run", bug)
    with pytest.raises(OSError):  # other OSErrors are internal failures, kept loud
        main(["report", "somewhere"])
