"""Checkpoint files: atomic writes, damaged files, unsafe pickles, foreign weights."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from convzoo import get_model
from convzoo.artifacts import CHECKPOINT_FORMAT as FORMAT
from convzoo.artifacts import (
    UnsafeCheckpointError,
    find_checkpoint,
    link_or_copy,
    load_checkpoint,
    save_checkpoint,
)
from convzoo.artifacts import checkpoints as ck
from convzoo.errors import CheckpointError
from convzoo.registry import model_from_checkpoint

OPTIONS = {"num_classes": 10, "in_channels": 1, "small_input": True, "width": 0.125}


def _state(model_name="resnet18", **extra):
    torch.manual_seed(0)
    model = get_model(model_name, **OPTIONS)
    return {
        "format": FORMAT,
        "model_name": model_name,
        "model_options": dict(OPTIONS),
        "model": model.state_dict(),
        "ema": None,
        "epoch": 1,
        "step": 10,
        "config": {"model": model_name, "lr": 0.1, "flags": [1, 2], "none": None},
        "rng": {"torch": torch.get_rng_state(), "python": [3, [1, 2, 3], None]},
        **extra,
    }


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    state = _state()
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["model_name"] == "resnet18" and loaded["step"] == 10
    assert loaded["config"] == state["config"]
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left


def test_crash_while_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(step=1), path)
    before = path.read_bytes()

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(step=2), path)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(path)
    assert not isinstance(err.value, UnsafeCheckpointError)


@pytest.mark.parametrize("content", [b"", b"hello world" * 20, b"PK\x03\x04" + b"\0" * 50])
def test_garbage_is_refused(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


class _Payload:
    """Unpickling this runs code: it would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["torch-zip", "raw-pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if kind == "torch-zip":
        torch.save({"format": FORMAT, "model": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"format": FORMAT, "x": _Payload(marker)}, protocol=2))
    # Both are named unsafe: the zip checkpoint by weights_only unpickling, the bare
    # pickle by reading its opcodes (neither is ever unpickled).
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code"):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload does work when unpickled without protection: the test can fail.
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_garbage_bytes_are_corrupt_not_unsafe(tmp_path):
    path = tmp_path / "last.pt"
    for data in (os.urandom(4096), b"\x80\x02garbage" * 100, b"PK\x03\x04" + os.urandom(500)):
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert not isinstance(info.value, UnsafeCheckpointError), str(info.value)
        assert "arbitrary code" not in str(info.value)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(CheckpointError, match="not a convzoo checkpoint"):
        load_checkpoint(path)


def test_find_checkpoint(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(_state(), run / "checkpoints" / "last.pt")
    # before the first validation there is no best.pt: last.pt stands in
    assert find_checkpoint(run) == run / "checkpoints" / "last.pt"
    save_checkpoint(_state(), run / "checkpoints" / "best.pt")
    assert find_checkpoint(run) == run / "checkpoints" / "best.pt"
    assert find_checkpoint(run, "last") == run / "checkpoints" / "last.pt"
    assert find_checkpoint(run / "checkpoints" / "last.pt") == run / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a run directory"):
        find_checkpoint(tmp_path / "empty")


def test_model_from_checkpoint_prefers_ema(tmp_path):
    state = _state()
    ema = {k: v.clone() for k, v in state["model"].items()}
    first = next(k for k, v in ema.items() if v.is_floating_point())
    ema[first] += 1.0
    state["ema"] = ema
    model = model_from_checkpoint(state)
    assert not model.training
    assert torch.equal(model.state_dict()[first], ema[first])
    plain = model_from_checkpoint(state, use_ema=False)
    assert torch.equal(plain.state_dict()[first], state["model"][first])


def test_weights_of_another_model_are_refused():
    state = _state()
    state["model_name"] = "vgg11"
    with pytest.raises(CheckpointError, match="vgg11"):
        model_from_checkpoint(state)
    state = _state()
    state["model_options"] = {**OPTIONS, "num_classes": 7}
    with pytest.raises(CheckpointError, match="shape"):
        model_from_checkpoint(state)


def test_link_or_copy_survives_replacement(tmp_path):
    a, b = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(_state(step=1), a)
    link_or_copy(a, b)
    save_checkpoint(_state(step=2), a)
    assert load_checkpoint(b)["step"] == 1 and load_checkpoint(a)["step"] == 2
