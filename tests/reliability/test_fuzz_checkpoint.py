"""Fuzzing the checkpoint loader with random, truncated, damaged and crafted files.

load_checkpoint (and model_from_checkpoint on what it returns) either gives back what
was saved or raises CheckpointError (ModelError for a bad model option) with a
one-line message; nothing crashes the interpreter, hangs, or allocates what a crafted
file declares. The crafted tensors and model options are tried under an address-space
ceiling, so an allocation that should never happen fails the test instead of the
machine.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convzoo import get_model
from convzoo.artifacts import CHECKPOINT_FORMAT as FORMAT
from convzoo.artifacts import load_checkpoint, save_checkpoint
from convzoo.errors import CheckpointError, ModelError
from convzoo.registry import model_from_checkpoint

from .common import FUZZ, memory_ceiling, works_or_refuses

OPTIONS = {"num_classes": 10, "in_channels": 1, "small_input": True, "width": 0.125}


def _state() -> dict:
    torch.manual_seed(0)
    model = get_model("nin", **OPTIONS)
    return {
        "format": FORMAT,
        "model_name": "nin",
        "model_options": dict(OPTIONS),
        "model": model.state_dict(),
        "ema": None,
        "epoch": 1,
        "step": 6,
        "config": {"model": "nin", "lr": 0.05},
        "metrics": [{"epoch": 1, "val_accuracy": 0.5}],
    }


class _Bytes(bytes):
    """Bytes with a short repr (hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    """The bytes of a real checkpoint of a tiny NiN."""
    path = tmp_path_factory.mktemp("ck") / "last.pt"
    save_checkpoint(_state(), path)
    return _Bytes(path.read_bytes())


def _load(path, tally, kind):
    status, value = works_or_refuses(load_checkpoint, path)
    if status == "refused":
        assert isinstance(value, CheckpointError) and str(path) in str(value)
    else:
        assert isinstance(value, dict) and value["format"] == FORMAT
    tally.input(f"checkpoint {kind}", refused=status == "refused")
    return status, value


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(tmp_path, tally, data):
    path = tmp_path / "random.pt"
    path.write_bytes(data)
    status, _ = _load(path, tally, "random bytes")
    assert status == "refused"


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated(tmp_path, tally, valid, cut):
    path = tmp_path / "cut.pt"
    path.write_bytes(valid[: int(len(valid) * cut)])
    status, _ = _load(path, tally, "truncated")
    assert status == "refused"


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8
    )
)
@pytest.mark.slow
def test_damaged_bytes(tmp_path, tally, valid, edits):
    """Bytes changed anywhere (zip headers, the pickle, tensor data): loads or refuses."""
    data = bytearray(valid)
    for where, value in edits:
        data[int(where * len(data))] = value
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(data))
    status, value = _load(path, tally, "damaged bytes")
    if status == "ok":  # e.g. a changed weight: still a whole, usable checkpoint
        model_from_checkpoint(value)


def _replace_member(archive: bytes, suffix: str, content: bytes) -> bytes:
    """``archive`` with the member ending in ``suffix`` replaced (CRCs recomputed)."""
    src = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = content if info.filename.endswith("/" + suffix) else src.read(info)
            dst.writestr(info.filename, data)
    return out.getvalue()


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.floats(0, 1),
)
@pytest.mark.slow
def test_damaged_pickle_with_good_zip(tmp_path, tally, valid, edits, cut):
    """The pickle inside an intact zip (right CRCs) is damaged: the unpickler itself is
    fuzzed, not only the zip reader."""
    archive = zipfile.ZipFile(io.BytesIO(valid))
    name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
    pkl = bytearray(archive.read(name))
    for where, value in edits:
        pkl[int(where * len(pkl))] = value
    pkl = pkl[: max(1, int(len(pkl) * cut))]
    path = tmp_path / "pickle.pt"
    path.write_bytes(_replace_member(valid, "data.pkl", bytes(pkl)))
    _load(path, tally, "damaged pickle")


# Plain values a checkpoint may hold besides tensors: they must come back unchanged.
PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(extra=st.dictionaries(st.text(max_size=10), PLAIN, max_size=5))
@pytest.mark.slow
def test_round_trip_of_plain_values(tmp_path, extra):
    """What save_checkpoint writes, load_checkpoint returns: any plain values, exactly."""
    state = {**extra, "format": FORMAT, "t": torch.arange(6.0).reshape(2, 3)}
    path = tmp_path / "plain.pt"
    save_checkpoint(state, path)
    back = load_checkpoint(path)
    assert torch.equal(back.pop("t"), state.pop("t"))
    assert back == state


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True), legacy=st.booleans())
@pytest.mark.slow
def test_raw_pickles_and_legacy_files(tmp_path, tally, cut, legacy):
    """torch's old (non-zip) format and a bare pickle, whole or cut short."""
    buf = io.BytesIO()
    if legacy:
        torch.save(_state(), buf, _use_new_zipfile_serialization=False)
    else:
        pickle.dump({"format": FORMAT, "step": 3, "x": [1.0, "a"]}, buf, protocol=2)
    data = buf.getvalue()
    path = tmp_path / "old.pt"
    path.write_bytes(data[: int(len(data) * cut)])
    status, _ = _load(path, tally, "legacy or bare pickle, truncated")
    assert status == "refused"


# ------------------------------------------------------------------ crafted tensors


class _StorageRef:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles as torch's own tensor-rebuild call, with any size, stride and offset."""

    def __init__(self, ref, size, stride, offset=0) -> None:
        self.ref, self.size, self.stride, self.offset = ref, size, stride, offset

    def __reduce__(self):
        args = (self.ref, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def _crafted(obj, records: dict[str, bytes]) -> bytes:
    """A checkpoint archive laid out as torch.save lays it out, holding ``obj``."""
    pkl = io.BytesIO()
    _Pickler(pkl, protocol=2).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")
    return out.getvalue()


TEN = {"0": b"\0" * 40}  # one storage of ten float32
CRAFTED = {
    # storage and size declared far beyond the 40 bytes the record holds
    "numel 10^12": (_Tensor(_StorageRef("0", 10**12), (10**12,), (1,)), TEN),
    "size beyond the storage": (_Tensor(_StorageRef("0", 10), (10**6, 10**6), (1, 1)), TEN),
    "offset beyond the storage": (_Tensor(_StorageRef("0", 10), (10,), (1,), 10**15), TEN),
    "negative size": (_Tensor(_StorageRef("0", 10), (-5,), (1,)), TEN),
    "missing record": (_Tensor(_StorageRef("7", 10), (10,), (1,)), TEN),
    "record shorter than declared": (_Tensor(_StorageRef("0", 10), (10,), (1,)), {"0": b"\0" * 8}),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_tensors_refused_without_allocating(tmp_path, tally, name):
    tensor, records = CRAFTED[name]
    path = tmp_path / "crafted.pt"
    path.write_bytes(_crafted({"format": FORMAT, "model": {"w": tensor}}, records))
    with memory_ceiling(2**30), pytest.raises(CheckpointError):
        load_checkpoint(path)
    tally.input("checkpoint crafted tensor")


def test_crafted_zero_stride_view_costs_nothing_and_fits_no_model(tmp_path, tally):
    """A 10^6 x 10^6 view of ten floats (stride 0) loads as the view it is (40 bytes),
    and no model accepts it as weights."""
    tensor = _Tensor(_StorageRef("0", 10), (10**6, 10**6), (0, 0))
    path = tmp_path / "view.pt"
    path.write_bytes(_crafted({"format": FORMAT, "w": tensor}, TEN))
    state = _state()
    name = next(iter(state["model"]))
    with memory_ceiling(2**30):
        view = load_checkpoint(path)["w"]
        assert view.shape == (10**6, 10**6) and view.untyped_storage().nbytes() == 40
        state["model"][name] = view
        with pytest.raises(CheckpointError, match="shape"):
            model_from_checkpoint(state)
    tally.input("checkpoint crafted tensor")


# ------------------------------------------------------------------ model options


@settings(parent=FUZZ, max_examples=60)
@given(
    name=st.sampled_from(["nin", "resnet18", "vgg11", "densenet121", "googlenet", "alexnet",
                          "nosuchnet", ""]),
    num_classes=st.one_of(st.integers(-3, 10**12), st.just(10), st.floats(), st.text(max_size=3)),
    width=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.125),
                    st.integers(-5, 10**6)),
    in_channels=st.one_of(st.integers(-2, 10**9), st.just(1)),
    extra=st.dictionaries(st.sampled_from(["aux_logits", "depth", "growth_rate", "bogus"]),
                          st.one_of(st.booleans(), st.integers(-5, 10**9)), max_size=2),
)  # fmt: skip
@pytest.mark.slow
def test_model_options_from_a_file(tally, name, num_classes, width, in_channels, extra):
    """Whatever model name and options a checkpoint carries, the model is rebuilt only
    when its weights fit; absurd sizes are refused before any memory is spent."""
    state = _state()
    options = {"num_classes": num_classes, "in_channels": in_channels, "small_input": True,
               "width": width, **extra}  # fmt: skip
    ckpt = {**state, "model_name": name, "model_options": options}
    with memory_ceiling(2**30):
        status, value = works_or_refuses(model_from_checkpoint, ckpt)
    fits = name == "nin" and options == {**OPTIONS, **extra} and not extra
    if status == "ok":
        assert fits or (name == "nin" and _same_shapes(value, state["model"]))
    else:
        assert isinstance(value, (CheckpointError, ModelError)), value
    tally.input("checkpoint model options", refused=status == "refused")


def _same_shapes(model, weights) -> bool:
    own = model.state_dict()
    return own.keys() == weights.keys() and all(own[k].shape == weights[k].shape for k in own)


def test_a_billion_classes_is_refused_at_once(tally):
    """The smallest file asking for a 10^9-class head (4 TB of weights): refused."""
    ckpt = {**_state(), "model_options": {**OPTIONS, "num_classes": 10**9}}
    with memory_ceiling(2**30), pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(ckpt)
    tally.input("checkpoint model options")
    assert math.prod((10**9, 24)) > 2**30  # the head alone would exceed the ceiling
