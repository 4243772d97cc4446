"""Untrusted files: checkpoints that would run code, safetensors, CIFAR tarballs.

* A checkpoint crafted to run code when unpickled (here: create a marker file) is
  refused by load_checkpoint and by every command that reads checkpoints (`convzoo
  eval`, `predict`, `export`, `train --resume`): exit 2, one line, marker absent.
* safetensors export and import round-trip exactly; damaged or lying safetensors files
  are refused with CheckpointError.
* The CIFAR-10 tarball reader refuses path traversal (``..``, absolute names, links,
  devices) and pickles that would run code or are not backed by the file's bytes.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from convzoo import get_model
from convzoo.artifacts import CHECKPOINT_FORMAT as FORMAT
from convzoo.artifacts import UnsafeCheckpointError, load_checkpoint, model_meta, save_checkpoint
from convzoo.cli import main
from convzoo.data.datasets import CIFAR10_CLASSES, load_dataset, read_cifar_tarball
from convzoo.errors import CheckpointError, DataError, ModelError
from convzoo.export import (
    export_checkpoint,
    export_safetensors,
    load_safetensors,
    read_safetensors_metadata,
)
from convzoo.registry import model_from_checkpoint

from .common import encoded_image, memory_ceiling

OPTIONS = {"num_classes": 10, "in_channels": 1, "small_input": True, "width": 0.125}


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalPayload:
    """The same through builtins.exec, another route attackers use."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def good_state() -> dict:
    torch.manual_seed(0)
    model = get_model("nin", **OPTIONS)
    return {
        "format": FORMAT,
        "model_name": "nin",
        "model_options": dict(OPTIONS),
        "model": model.state_dict(),
        "ema": None,
        "data": {
            "dataset": "fashion-mnist",
            "data_dir": None,
            "classes": [str(i) for i in range(10)],
            "mean": [0.5],
            "std": [0.25],
            "image_size": [28, 28],
            "resize": None,
            "in_channels": 1,
        },
        "config": {"model": "nin"},
        "epoch": 1,
        "step": 6,
        "metrics": [],
        "best_val_accuracy": 0.5,
    }


def write_evil(path, kind: str, marker) -> None:
    """A checkpoint file at ``path`` whose unpickling would create ``marker``."""
    state = good_state()
    if kind == "zip, in the weights":
        state["model"] = {**state["model"], "evil": Payload(marker)}
        torch.save(state, path)
    elif kind == "zip, in the config":
        state["config"] = {"model": "nin", "hook": EvalPayload(marker)}
        torch.save(state, path)
    elif kind == "zip, the whole object":
        torch.save(Payload(marker), path)
    elif kind == "legacy torch format":
        state["ema"] = Payload(marker)
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif kind == "bare pickle":
        path.write_bytes(pickle.dumps({"format": FORMAT, "x": Payload(marker)}, protocol=2))
    elif kind == "bare pickle, protocol 5":
        path.write_bytes(pickle.dumps({"format": FORMAT, "x": EvalPayload(marker)}, protocol=5))
    else:
        raise AssertionError(kind)


KINDS = [
    "zip, in the weights",
    "zip, in the config",
    "zip, the whole object",
    "legacy torch format",
    "bare pickle",
    "bare pickle, protocol 5",
]


@pytest.mark.slow
def test_the_payloads_work(tmp_path):
    """Without protection each payload does run (so the tests below can fail)."""
    lines = []
    for i, kind in enumerate(KINDS):
        path = tmp_path / f"evil-{i}.pt"
        write_evil(path, kind, tmp_path / f"ran-{i}")
        loader = (
            "pickle.load(open(p, 'rb'))"
            if kind.startswith("bare")
            else ("torch.load(p, weights_only=False)")
        )
        lines.append(f"p = {str(path)!r}\ntry:\n    {loader}\nexcept Exception:\n    pass")
    code = "import pickle, torch\n" + "\n".join(lines)
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    for i, kind in enumerate(KINDS):
        assert (tmp_path / f"ran-{i}").exists(), kind


@pytest.mark.parametrize("kind", KINDS)
def test_load_checkpoint_never_runs_the_payload(tmp_path, tally, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    write_evil(path, kind, marker)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    assert "\n" not in str(err.value)
    if kind != "zip, the whole object":
        assert isinstance(err.value, UnsafeCheckpointError), err.value
    tally.input("checkpoint that runs code")


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def make_run_dir(root, evil_name: str, kind: str, marker):
    """A run directory whose checkpoints/<evil_name> is hostile (the others are fine)."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "nin", "dataset": "fashion-mnist"}))
    for name in ("last.pt", "best.pt"):
        if name != evil_name:
            save_checkpoint(good_state(), run / "checkpoints" / name)
    write_evil(run / "checkpoints" / evil_name, kind, marker)
    return run


@pytest.mark.parametrize("kind", ["zip, in the weights", "legacy torch format", "bare pickle"])
@pytest.mark.parametrize("command", ["eval", "eval-file", "predict", "export", "resume"])
def test_commands_refuse_a_checkpoint_that_runs_code(tmp_path, capsys, tally, command, kind):
    marker = tmp_path / "ran"
    evil = "last.pt" if command == "resume" else "best.pt"
    run = make_run_dir(tmp_path, evil, kind, marker)
    image = tmp_path / "x.png"
    image.write_bytes(encoded_image("PNG", size=(28, 28), mode="L"))
    argv = {
        "eval": ["eval", str(run)],
        "eval-file": ["eval", str(run / "checkpoints" / evil)],
        "predict": ["predict", str(run), str(image)],
        "export": ["export", str(run), "--format", "safetensors"],
        "resume": ["train", "nin", "--resume", str(run), "--quiet"],
    }[command]
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "arbitrary code" in err, err
    assert not marker.exists()
    assert not (run / "model.safetensors").exists()
    assert not (run / "model-best.safetensors").exists()
    tally.input("checkpoint that runs code (CLI)")


def test_resume_does_not_fall_back_onto_a_hostile_checkpoint(tmp_path, capsys, tally):
    """last.pt damaged, last.prev.pt hostile: refused, not loaded as the fallback."""
    marker = tmp_path / "ran"
    run = make_run_dir(tmp_path, "best.pt", "zip, in the weights", marker)
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 half a checkpoint")
    write_evil(run / "checkpoints" / "last.prev.pt", "bare pickle", marker)
    code, _, err = run_cli(["train", "nin", "--resume", str(run), "--quiet"], capsys)
    assert code == 2 and "arbitrary code" in err and not marker.exists(), err
    tally.input("checkpoint that runs code (CLI)")


@pytest.mark.slow
def test_a_checkpoint_in_a_subprocess_exits_2(tmp_path, tally):
    """The same at the process level: `python -m convzoo eval EVIL.pt`."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    write_evil(path, "zip, in the weights", marker)
    proc = subprocess.run(
        [sys.executable, "-m", "convzoo", "eval", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "arbitrary code" in proc.stderr
    assert not marker.exists()
    tally.input("checkpoint that runs code (CLI)")


# ------------------------------------------------------------------ safetensors


@pytest.mark.slow
def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(1)
    model = get_model("resnet18", num_classes=7, in_channels=3, small_input=True, width=0.125)
    model.eval()
    # non-trivial batch-norm statistics, so buffers are checked too
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    meta = {"model_name": "resnet18", "model_options": {"num_classes": 7, "in_channels": 3,
            "small_input": True, "width": 0.125}, "classes": list("abcdefg")}  # fmt: skip
    path = export_safetensors(model, tmp_path / "m.safetensors", metadata=meta)
    # the one schema: every MODEL_META_KEYS key, those not given are null
    assert read_safetensors_metadata(path) == model_meta(**meta)
    back = load_safetensors(path)
    assert back.training is False
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left


def test_safetensors_export_of_a_checkpoint(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    save_checkpoint(good_state(), ckpt)
    out = export_checkpoint(tmp_path / "run", "safetensors")
    assert out == tmp_path / "run" / "model-best.safetensors"  # not training's model.safetensors
    model = load_safetensors(out)
    want = model_from_checkpoint(load_checkpoint(ckpt))
    for k, v in want.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    meta = read_safetensors_metadata(out)
    assert meta["classes"] == good_state()["data"]["classes"] and meta["in_channels"] == 1


def _safetensors_file(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _hostile_safetensors(tmp_path) -> dict[str, bytes]:
    model = get_model("nin", **OPTIONS)
    good = tmp_path / "good.safetensors"
    export_safetensors(model, good, metadata={"model_name": "nin", "model_options": OPTIONS})
    data = good.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])

    def with_meta(meta) -> bytes:
        h = dict(header, __metadata__={"format": "pt", "convzoo": json.dumps(meta)})
        return _safetensors_file(h, data[8 + header_len :])

    first = next(k for k in header if k != "__metadata__")
    lying = dict(header)
    lying[first] = dict(header[first], data_offsets=[0, 2**40])
    return {
        "empty": b"",
        "random": bytes(range(256)) * 4,
        "truncated": data[: len(data) // 2],
        "header length 2^63": struct.pack("<Q", 2**63) + data[8:],
        "header length past the end": struct.pack("<Q", len(data)) + data[8:],
        "header not JSON": struct.pack("<Q", 8) + b"{not js}",
        "offsets past the end": _safetensors_file(lying, data[8 + header_len :]),
        "no convzoo metadata": _safetensors_file(
            {k: v for k, v in header.items() if k != "__metadata__"}, data[8 + header_len :]
        ),
        "options not a dict": with_meta({"model_name": "nin", "model_options": [1, 2]}),
        "unknown model": with_meta({"model_name": "resnet1000", "model_options": OPTIONS}),
        "a billion classes": with_meta(
            {"model_name": "nin", "model_options": {**OPTIONS, "num_classes": 10**9}}
        ),
        "weights of another model": with_meta({"model_name": "resnet18", "model_options": OPTIONS}),
    }


def test_hostile_safetensors_refused(tmp_path, tally):
    for name, data in _hostile_safetensors(tmp_path).items():
        path = tmp_path / "hostile.safetensors"
        path.write_bytes(data)
        with memory_ceiling(2**30), pytest.raises((CheckpointError, ModelError)) as err:
            load_safetensors(path)
        assert "\n" not in str(err.value), name
        tally.input("safetensors hostile")


# ------------------------------------------------------------------ CIFAR-10 tarballs


def cifar_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"synthetic",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }
    return pickle.dumps(batch, protocol=2)


def write_tarball(path, extra=(), replace: dict | None = None, first=()) -> None:
    """A tiny CIFAR-10 python tarball, with ``extra`` members (TarInfo, data) added,
    ``first`` ones before the batches, and batch contents replaced by ``replace``."""
    members = {f"data_batch_{i}": cifar_batch(3, i) for i in range(1, 6)}
    members["test_batch"] = cifar_batch(3, 9)
    members["batches.meta"] = pickle.dumps(
        {b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, protocol=2
    )
    members.update(replace or {})
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in first:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def member(name, kind=tarfile.REGTYPE, data=b"x", link="", pax=None):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        info.pax_headers = pax
    return info, (data if kind == tarfile.REGTYPE else None)


TRAVERSAL = {
    "dotdot": member("../evil"),
    "dotdot deep": member("cifar-10-batches-py/../../evil"),
    "dot then dotdot": member("./../evil"),
    "absolute": member("/tmp/evil"),
    "windows drive": member("C:/evil"),
    "backslash absolute": member("\\evil"),
    "long name with dotdot": member("cifar-10-batches-py/" + "a/" * 60 + "../" * 62 + "evil"),
    "pax path override": member("innocent", pax={"path": "../../evil"}),
    "symlink out": member("cifar-10-batches-py/link", tarfile.SYMTYPE, link="/etc/passwd"),
    "symlink named as a batch": member(
        "cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE, link="/etc/passwd"
    ),
    "hardlink": member("cifar-10-batches-py/hard", tarfile.LNKTYPE, link="../../evil"),
    "character device": member("cifar-10-batches-py/dev", tarfile.CHRTYPE),
    "block device": member("cifar-10-batches-py/blk", tarfile.BLKTYPE),
    "fifo": member("cifar-10-batches-py/fifo", tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("where", ["after", "before"])
@pytest.mark.parametrize("name", list(TRAVERSAL))
def test_cifar_tarball_traversal_refused(tmp_path, tally, name, where):
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    archive = folder / "cifar-10-python.tar.gz"
    bad = [TRAVERSAL[name]]
    write_tarball(
        archive, extra=bad if where == "after" else (), first=bad if where == "before" else ()
    )
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DataError, match="unsafe member") as err:
        read_cifar_tarball(archive)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="unsafe member"):
        load_dataset("cifar10", data_dir=tmp_path / "data")
    # nothing was extracted or created anywhere
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not os.path.lexists("/tmp/evil")
    tally.input("cifar tarball traversal")


def test_the_tiny_tarball_itself_loads(tmp_path):
    (tmp_path / "cifar10").mkdir()
    write_tarball(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.train_images.shape == (15, 3, 32, 32) and ds.classes == CIFAR10_CLASSES


class _Reconstruct:
    """Pickles as numpy's array-rebuild call with a declared shape and no data."""

    def __init__(self, shape) -> None:
        self.shape = shape

    def __reduce__(self):
        core = getattr(np, "_core", None) or np.core
        return (core.multiarray._reconstruct, (np.ndarray, self.shape, b"B"))


def _hostile_batches(marker) -> dict[str, bytes]:
    return {
        "runs code": pickle.dumps(Payload(marker), protocol=2),
        "runs code inside the dict": pickle.dumps(
            {b"data": Payload(marker), b"labels": [1]}, protocol=2
        ),
        "exec": pickle.dumps({b"data": EvalPayload(marker)}, protocol=4),
        # an array whose pixels are not in the file (uninitialised memory), the shape
        # and labels right: refused, not read as 10 images of whatever memory held
        "array not backed by the file": pickle.dumps(
            {b"data": _Reconstruct((10, 3072)), b"labels": list(range(10))}, protocol=2
        ),
        "3 GB array declared": pickle.dumps(
            {b"data": _Reconstruct((1_000_000, 3072)), b"labels": [0] * 1_000_000}, protocol=2
        ),
        "not a dict": pickle.dumps([1, 2, 3], protocol=2),
        "truncated": cifar_batch(3, 1)[:50],
        "wrong pixel count": pickle.dumps(
            {b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, protocol=2
        ),
        "labels out of range": pickle.dumps(
            {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 10, -1]}, protocol=2
        ),
    }


@pytest.mark.parametrize("layout", ["tarball", "folder"])
def test_cifar_hostile_batches_refused(tmp_path, tally, layout):
    marker = tmp_path / "ran"
    for name, data in _hostile_batches(marker).items():
        root = tmp_path / name.replace(" ", "-") / layout
        folder = root / "cifar10"
        folder.mkdir(parents=True)
        if layout == "tarball":
            write_tarball(folder / "cifar-10-python.tar.gz", replace={"data_batch_2": data})
        else:
            batches = folder / "cifar-10-batches-py"
            batches.mkdir()
            for i in range(1, 6):
                (batches / f"data_batch_{i}").write_bytes(data if i == 2 else cifar_batch(3, i))
            (batches / "test_batch").write_bytes(cifar_batch(3, 9))
        with memory_ceiling(2**30), pytest.raises(DataError, match="data_batch_2") as err:
            load_dataset("cifar10", data_dir=root)
        assert "\n" not in str(err.value), name
        assert not marker.exists(), name
        tally.input("cifar batch hostile")


def test_cifar_member_declaring_a_huge_size_is_not_read(tmp_path, tally):
    """A batch member whose tar header declares 8 GB is refused from the header."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = 8 * 2**30
    raw = io.BytesIO()
    raw.write(info.tobuf(format=tarfile.GNU_FORMAT))
    raw.write(b"\0" * 4096)
    import gzip

    archive.write_bytes(gzip.compress(raw.getvalue()))
    with memory_ceiling(2**30), pytest.raises(DataError, match="implausibly large|not a readable"):
        read_cifar_tarball(archive)
    tally.input("cifar tarball huge member")
