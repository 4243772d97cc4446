"""Where data is found, verified downloads from a local server, and `convzoo data`."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import socket
import threading
import time
import types
from pathlib import Path

import pytest

from convzoo.cli import main
from convzoo.data import locate
from convzoo.data.datasets import load_dataset
from convzoo.errors import DataError

IDX_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


def test_cache_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert locate.cache_dir() == tmp_path / "c" / "convzoo"
    assert locate.default_dir("mnist") == tmp_path / "c" / "convzoo" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert locate.cache_dir() == tmp_path / "home" / ".cache" / "convzoo"


def test_search_order(tmp_path, data_env, make_idx_dataset, monkeypatch):
    """--data-dir beats $CONVZOO_DATA beats the cache beats system copies."""
    system = make_idx_dataset(data_env.system / "fashion-mnist", 10, 10)
    found = locate.find_dataset("fashion-mnist")
    assert (found.folder, found.origin) == (system, "system")

    cache = make_idx_dataset(data_env.cache / "fashion-mnist", 10, 10)
    found = locate.find_dataset("fashion-mnist")
    assert (found.folder, found.origin) == (cache, "cache")

    env_root = tmp_path / "env"
    env = make_idx_dataset(env_root / "fashion-mnist", 10, 10)
    monkeypatch.setenv("CONVZOO_DATA", str(env_root))
    found = locate.find_dataset("fashion-mnist")
    assert (found.folder, found.origin) == (env, "$CONVZOO_DATA")

    flat = make_idx_dataset(tmp_path / "flat", 10, 10, compress=False)  # files right in DIR
    found = locate.find_dataset("fashion-mnist", data_dir=flat)
    assert (found.folder, found.origin) == (flat, "--data-dir")
    assert found.files["train_images"].name == "train-images-idx3-ubyte"

    # an incomplete copy in a folder the user named is not replaced by another one
    (flat / "t10k-labels-idx1-ubyte").unlink()
    assert locate.find_dataset("fashion-mnist", data_dir=flat) is None
    # without --data-dir, an incomplete copy is passed over
    (env / "t10k-labels-idx1-ubyte.gz").unlink()
    assert locate.find_dataset("fashion-mnist").origin == "cache"


def test_incomplete_data_dir_names_what_is_missing(tmp_path, data_env, make_idx_dataset):
    make_idx_dataset(data_env.system / "fashion-mnist", 10, 10)  # a copy it must not use
    folder = make_idx_dataset(tmp_path / "mine" / "fashion-mnist", 10, 10)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    (folder / "train-images-idx3-ubyte.gz").unlink()
    assert locate.missing_files("fashion-mnist", folder) == [
        "train-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    msg = locate.not_in_data_dir("fashion-mnist", tmp_path / "mine")
    assert msg.startswith(f"--data-dir {tmp_path / 'mine'}: no complete Fashion-MNIST there; ")
    assert f"{folder} lacks train-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in msg
    assert "leave out --data-dir" in msg and "\n" not in msg
    # An empty folder: what it lacks is everything, said of the folder itself.
    (tmp_path / "empty").mkdir()
    msg = locate.not_in_data_dir("mnist", tmp_path / "empty")
    assert f"{tmp_path / 'empty'} lacks train-images-idx3-ubyte.gz, train-labels" in msg


def test_dotted_names_and_mnist_subfolder(tmp_path, data_env, make_idx_dataset):
    folder = make_idx_dataset(tmp_path / "root" / "mnist", 10, 10, compress=False)
    for path in list(folder.iterdir()):
        path.rename(folder / path.name.replace("-idx", ".idx"))  # train-images.idx3-ubyte
    found = locate.find_dataset("mnist", data_dir=tmp_path / "root")
    assert found.folder == folder
    assert locate.find_dataset("fashion-mnist", data_dir=tmp_path / "root") is None


def test_missing_data_dir(tmp_path, data_env):
    with pytest.raises(DataError, match="--data-dir .*no such directory"):
        locate.find_dataset("fashion-mnist", data_dir=tmp_path / "nope")


# ---------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server in a thread: `.path` is the folder it serves at `.url`."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield types.SimpleNamespace(path=root, url=f"http://127.0.0.1:{server.server_address[1]}/")
    server.shutdown()
    server.server_close()


def serve_fake_dataset(www: Path, make_idx_dataset, monkeypatch, tamper: str | None = None):
    """Put a tiny Fashion-MNIST on the server and make it the 'official' one."""
    make_idx_dataset(www, 20, 10)
    files = []
    for name in IDX_FILES:
        data = (www / name).read_bytes()
        files.append(locate.RemoteFile(name, len(data), hashlib.sha256(data).hexdigest()))
    if tamper:
        data = bytearray((www / tamper).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (www / tamper).write_bytes(bytes(data))
    src = dataclasses.replace(
        locate.SOURCES["fashion-mnist"], files=tuple(files), base_url="http://192.0.2.1/"
    )
    monkeypatch.setitem(locate.SOURCES, "fashion-mnist", src)


def test_fetch_good_download(http_root, data_env, make_idx_dataset, monkeypatch):
    serve_fake_dataset(http_root.path, make_idx_dataset, monkeypatch)
    folder = locate.fetch("fashion-mnist", mirror=http_root.url, progress=False)
    assert folder == data_env.cache / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX_FILES)  # no temp files
    ds = load_dataset("fashion-mnist")
    assert ds.source == folder and len(ds.train_labels) == 20
    # a second fetch keeps the verified files and downloads nothing
    messages = []
    locate.fetch("fashion-mnist", mirror=http_root.url, progress=False, log=messages.append)
    assert all("already there" in m for m in messages) and len(messages) == 4


def test_fetch_mirror_from_environment_with_placeholder(
    http_root, data_env, make_idx_dataset, monkeypatch
):
    serve_fake_dataset(http_root.path / "fashion-mnist", make_idx_dataset, monkeypatch)
    monkeypatch.setenv("CONVZOO_MIRROR", http_root.url + "{dataset}")
    dest = locate.fetch("fashion-mnist", progress=False)
    assert (dest / IDX_FILES[0]).is_file()


def test_fetch_sha_mismatch_leaves_nothing(http_root, data_env, make_idx_dataset, monkeypatch):
    serve_fake_dataset(http_root.path, make_idx_dataset, monkeypatch, tamper=IDX_FILES[1])
    with pytest.raises(DataError, match="SHA-256 mismatch") as info:
        locate.fetch("fashion-mnist", mirror=http_root.url, progress=False)
    assert IDX_FILES[1] in str(info.value) and "\n" not in str(info.value)
    folder = data_env.cache / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == [IDX_FILES[0]]  # only the good one


def test_content_hash_accepts_recompressed_mirror(tmp_path, data_env):
    """A recompressed .gz (as Debian ships) passes when its payload hash matches."""
    import gzip

    payload = b"\x00\x00\x08\x01\x00\x00\x00\x03abc"
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(payload, mtime=1))
    remote = locate.RemoteFile("f.gz", 10, "0" * 64, hashlib.sha256(payload).hexdigest())
    assert locate._verified(path, remote)
    assert not locate._verified(path, dataclasses.replace(remote, content_sha256="1" * 64))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_unreachable_server_fails_fast(data_env):
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        locate.fetch("fashion-mnist", mirror=f"http://127.0.0.1:{_closed_port()}/", progress=False)
    assert time.monotonic() - start < 30  # generous: it only has to not hang
    message = str(info.value)
    assert (
        message.startswith("cannot download") and "apt-get install dataset-fashion-mnist" in message
    )
    assert "\n" not in message
    assert not any((data_env.cache / "fashion-mnist").iterdir())


# ---------------------------------------------------------------- command line


def test_cli_where(capsys, tmp_path, data_env, make_idx_dataset):
    assert main(["data", "where", "fashion-mnist"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fashion-mnist not found" in err

    folder = make_idx_dataset(data_env.system / "fashion-mnist", 10, 10)
    assert main(["data", "where", "fashion-mnist"]) == 0
    assert capsys.readouterr().out.strip() == str(folder)

    assert main(["data", "where"]) == 0
    out = capsys.readouterr().out
    assert f"{folder}  (system)" in out and "mnist" in out and "not found" in out

    assert main(["data", "where", "fashion_mnst"]) == 2
    assert "did you mean fashion-mnist" in capsys.readouterr().err

    assert main(["data", "where", str(tmp_path)]) == 0  # an image folder is where it is
    assert capsys.readouterr().out.strip() == str(tmp_path.resolve())


def test_cli_fetch(capsys, http_root, data_env, make_idx_dataset, monkeypatch):
    serve_fake_dataset(http_root.path, make_idx_dataset, monkeypatch)
    dest = data_env.cache / "elsewhere"
    assert (
        main(["data", "fetch", "fashion-mnist", "--mirror", http_root.url, "--dest", str(dest)])
        == 0
    )
    assert capsys.readouterr().out.strip() == str(dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(IDX_FILES)

    url = f"http://127.0.0.1:{_closed_port()}/"
    assert main(["data", "fetch", "fashion-mnist", "--mirror", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("convzoo data: error: cannot download")

    assert main(["data", "fetch", "imagenet"]) == 2
    assert capsys.readouterr().err.count("error") == 1


def test_cli_data_needs_an_action(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data"])
    assert info.value.code == 2
