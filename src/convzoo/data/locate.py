"""Where datasets live, and verified downloads of the official files.

Search order for a dataset (the first folder holding a complete copy wins):

1. ``data_dir`` (``--data-dir``): its per-dataset subfolder (e.g. ``DIR/fashion-mnist``),
   then the folder itself. A folder the user names is used or refused: when it holds no
   complete copy, nothing else is searched, and :func:`not_in_data_dir` says which files
   are missing there (a silent fall-back would train on other data than
   the user asked for, and record their folder as the source);
2. ``$CONVZOO_DATA``, the same way (only when no ``data_dir`` is given);
3. the user cache, ``$XDG_CACHE_HOME/convzoo/<dataset>`` (default ``~/.cache/convzoo``),
   where ``convzoo data fetch`` puts downloads;
4. system-wide copies, ``/usr/share/datasets/<dataset>`` (Debian's
   ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).

IDX files are accepted gzipped or raw (``train-images-idx3-ubyte.gz``,
``train-images-idx3-ubyte``, or ``train-images.idx3-ubyte``). CIFAR-10 is accepted as
the python tarball ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``.

:func:`fetch` downloads to the cache with a short connect timeout, writes each file to
a temporary name, checks its SHA-256 and renames it only when complete and correct.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

__all__ = [
    "CONNECT_TIMEOUT",
    "SOURCES",
    "SYSTEM_ROOTS",
    "DatasetSource",
    "Located",
    "RemoteFile",
    "cache_dir",
    "candidate_dirs",
    "default_dir",
    "fetch",
    "find_dataset",
    "find_files",
    "how_to_get",
    "missing_files",
    "not_in_data_dir",
]

CONNECT_TIMEOUT = 5.0  # seconds: connect, and each wait for data
SYSTEM_ROOTS: list[Path] = [Path("/usr/share/datasets"), Path("/usr/local/share/datasets")]


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name, size and SHA-256 as published."""

    name: str
    size: int
    sha256: str
    # SHA-256 of the decompressed payload of a .gz file; a mirror that recompressed the
    # same data (Debian did) is accepted when this matches.
    content_sha256: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """A dataset's official download location and the local names that stand for it."""

    name: str
    title: str
    base_url: str
    files: tuple[RemoteFile, ...]
    folders: tuple[str, ...]  # the dataset's folder names under a data root
    kind: str  # "idx" or "cifar"
    debian_package: str | None = None


def _idx_files(stems_sizes: list[tuple[str, int, str, str | None]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(f"{s}.gz", size, sha, content) for s, size, sha, content in stems_sizes)


# SHA-256 of the published files: Fashion-MNIST and MNIST as listed in tensorflow/datasets
# (url_checksums/fashion_mnist.txt, mnist.txt); CIFAR-10's python tarball as published with
# keras.datasets.cifar10. Fashion-MNIST's content hashes are those of the decompressed
# files of Debian's dataset-fashion-mnist (recompressed, byte-identical payload).
SOURCES: dict[str, DatasetSource] = {
    "fashion-mnist": DatasetSource(
        name="fashion-mnist",
        title="Fashion-MNIST",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files=_idx_files(
            [
                (
                    "train-images-idx3-ubyte",
                    26421880,
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                ),
                (
                    "train-labels-idx1-ubyte",
                    29515,
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                ),
                (
                    "t10k-images-idx3-ubyte",
                    4422102,
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                ),
                (
                    "t10k-labels-idx1-ubyte",
                    5148,
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                ),
            ]
        ),
        folders=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
        kind="idx",
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": DatasetSource(
        name="mnist",
        title="MNIST",
        base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        files=_idx_files(
            [
                (
                    "train-images-idx3-ubyte",
                    9912422,
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                    None,
                ),
                (
                    "train-labels-idx1-ubyte",
                    28881,
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                    None,
                ),
                (
                    "t10k-images-idx3-ubyte",
                    1648877,
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                    None,
                ),
                (
                    "t10k-labels-idx1-ubyte",
                    4542,
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                    None,
                ),
            ]
        ),
        folders=("mnist", "MNIST/raw"),
        kind="idx",
    ),
    "cifar10": DatasetSource(
        name="cifar10",
        title="CIFAR-10",
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(
            RemoteFile(
                "cifar-10-python.tar.gz",
                170498071,
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            ),
        ),
        folders=("cifar10", "cifar-10", "CIFAR10"),
        kind="cifar",
    ),
}

IDX_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_MEMBERS = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _source(name: str) -> DatasetSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}") from None


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/convzoo`` (``~/.cache/convzoo`` when unset)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "convzoo"


def default_dir(name: str) -> Path:
    """Where ``convzoo data fetch NAME`` puts the files: ``cache_dir() / NAME``."""
    return cache_dir() / _source(name).name


def _idx_candidates(stem: str) -> list[str]:
    dotted = stem.replace("-idx", ".idx", 1)  # train-images.idx3-ubyte, as some copies name it
    return [f"{stem}.gz", stem, f"{dotted}.gz", dotted]


def find_files(name: str, folder: str | os.PathLike) -> dict[str, Path] | None:
    """The files of dataset ``name`` in ``folder``, or None when the copy there is incomplete.

    IDX datasets: keys train_images, train_labels, test_images, test_labels.
    CIFAR-10: key ``archive`` (the tarball) or ``folder`` (the extracted batches).
    """
    src = _source(name)
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if src.kind == "cifar":
        batches = folder / CIFAR_FOLDER
        if all((batches / m).is_file() for m in CIFAR_MEMBERS):
            return {"folder": batches}
        if all((folder / m).is_file() for m in CIFAR_MEMBERS):
            return {"folder": folder}
        archive = folder / src.files[0].name
        return {"archive": archive} if archive.is_file() else None
    found: dict[str, Path] = {}
    for key, remote in zip(IDX_KEYS, src.files, strict=True):
        stem = remote.name.removesuffix(".gz")
        for candidate in _idx_candidates(stem):
            if (folder / candidate).is_file():
                found[key] = folder / candidate
                break
        else:
            return None
    return found


def missing_files(name: str, folder: str | os.PathLike) -> list[str]:
    """The files of dataset ``name`` that ``folder`` lacks (each under its official name;
    an IDX file may also be raw or dotted); empty when the copy there is complete."""
    src = _source(name)
    folder = Path(folder)
    if find_files(name, folder) is not None:
        return []
    if src.kind == "cifar":
        return [f"{src.files[0].name} (or its extracted {CIFAR_FOLDER}/)"]
    return [
        remote.name
        for remote in src.files
        if not any((folder / c).is_file() for c in _idx_candidates(remote.name[:-3]))
    ]


def candidate_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """Every folder searched for ``name``, in order, each with its origin label.

    With ``data_dir``, only the folders under it: the folder the user named is the one
    used (see the module doc)."""
    src = _source(name)
    if data_dir is not None and str(data_dir) != "":
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"--data-dir {data_dir}: no such directory")
        return [("--data-dir", root / sub) for sub in src.folders] + [("--data-dir", root)]
    out: list[tuple[str, Path]] = []
    env = os.environ.get("CONVZOO_DATA", "")
    if env:
        root = Path(env).expanduser()
        out += [("$CONVZOO_DATA", root / sub) for sub in src.folders]
        out.append(("$CONVZOO_DATA", root))
    out.append(("cache", default_dir(name)))
    for root in SYSTEM_ROOTS:
        out += [("system", root / sub) for sub in src.folders]
    return out


@dataclass(frozen=True)
class Located:
    """A complete copy of a dataset: the folder, where it came from, and its files."""

    name: str
    folder: Path
    origin: str  # "--data-dir", "$CONVZOO_DATA", "cache" or "system"
    files: dict[str, Path]


def find_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Located | None:
    """The first complete copy of ``name`` in the search order, or None.

    With ``data_dir``, only the copy there (None when it is incomplete: see
    :func:`not_in_data_dir`); nothing else is searched.
    """
    for origin, folder in candidate_dirs(name, data_dir):
        files = find_files(name, folder)
        if files is not None:
            return Located(name, folder, origin, files)
    return None


def not_in_data_dir(name: str, data_dir: str | os.PathLike) -> str:
    """One line saying what ``data_dir`` lacks to hold dataset ``name``: the files
    missing in the folder that comes closest (the per-dataset subfolder when it
    exists, else ``data_dir`` itself), and the fix."""
    candidates = candidate_dirs(name, data_dir)
    folders = [f for _, f in candidates if f.is_dir()]
    closest = min(folders, key=lambda f: (len(missing_files(name, f)), f == folders[-1]))
    missing = missing_files(name, closest)
    src = _source(name)
    where = " or ".join(f"{data_dir}/{sub}" for sub in src.folders)
    return (
        f"--data-dir {data_dir}: no complete {src.title} there; {closest} lacks "
        f"{', '.join(missing)} (looked in {where} and {data_dir} itself); "
        f"put the files there, or leave out --data-dir to use the usual places "
        "(`convzoo data where`)"
    )


def how_to_get(name: str, *, suggest_fetch: bool = True) -> str:
    """One sentence saying how to get dataset ``name``."""
    src = _source(name)
    names = [f.name for f in src.files]
    listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
    raw = " (gzipped or not)" if src.kind == "idx" else ""
    parts = []
    if src.debian_package:
        parts.append(f"`sudo apt-get install {src.debian_package}` (Debian/Ubuntu)")
    if suggest_fetch:
        parts.append(f"`convzoo data fetch {src.name}`")
    how = f"get {src.title} with {' or '.join(parts)}, or " if parts else f"to get {src.title}, "
    return (
        f"{how}download {listed}{raw} from "
        f"{src.base_url} into {default_dir(name)} (or into the folder given by --data-dir "
        f"or $CONVZOO_DATA)"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _content_sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except (OSError, EOFError, ValueError):
        return None
    return h.hexdigest()


def _verified(path: Path, remote: RemoteFile) -> bool:
    if _sha256(path) == remote.sha256:
        return True
    return remote.content_sha256 is not None and _content_sha256(path) == remote.content_sha256


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.shown = label, total, -1

    def update(self, done: int) -> None:
        pct = min(100, done * 100 // self.total) if self.total else 0
        if pct == self.shown:
            return
        self.shown = pct
        bar = "#" * (pct // 4)
        sys.stderr.write(
            f"\r{self.label}  [{bar:<25}] {pct:3d}%  {done / 1e6:7.1f}/{self.total / 1e6:.1f} MB"
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _mirror_url(base: str, dataset: str) -> str:
    base = base.replace("{dataset}", dataset)
    return base if base.endswith("/") else base + "/"


def _download(
    url: str, target: Path, remote: RemoteFile, timeout: float, progress: bool, dataset: str
) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    limit = 2 * remote.size + (1 << 20)
    bar = None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "convzoo"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or remote.size
            bar = _Progress(remote.name, total) if progress else None
            done = 0
            while chunk := response.read(1 << 16):
                done += len(chunk)
                if done > limit:
                    raise DataError(
                        f"{url}: the server sent more than {limit:,} bytes for a "
                        f"{remote.size:,}-byte file; download abandoned"
                    )
                out.write(chunk)
                if bar:
                    bar.update(done)
            out.flush()
            os.fsync(out.fileno())
        if bar:
            bar.close()
            bar = None
        if not _verified(tmp, remote):
            raise DataError(
                f"{url}: SHA-256 mismatch (expected {remote.sha256}); the file was not kept. "
                f"Try again, or {how_to_get(dataset, suggest_fetch=False)}"
            )
        os.replace(tmp, target)
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"cannot download {url} ({reason}); {how_to_get(dataset, suggest_fetch=False)}"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot write {target} ({exc.strerror or exc})") from None
    finally:
        if bar:
            bar.close()
        tmp.unlink(missing_ok=True)


def fetch(
    name: str,
    dest: str | os.PathLike | None = None,
    *,
    mirror: str | None = None,
    timeout: float = CONNECT_TIMEOUT,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download dataset ``name``'s official files into ``dest`` (default: the cache).

    ``mirror`` (or ``$CONVZOO_MIRROR``) replaces the official base URL; ``{dataset}`` in
    it is replaced by the dataset name. Files already in ``dest`` with the right SHA-256
    are kept. Each download goes to a temporary name, is checked, then renamed. The
    progress bar goes to stderr, by default only when stderr is a terminal. Raises
    DataError, with instructions for getting the files by hand, when a download fails.
    Returns the folder.
    """
    src = _source(name)
    folder = Path(dest).expanduser() if dest is not None else default_dir(name)
    base = mirror or os.environ.get("CONVZOO_MIRROR") or src.base_url
    base = _mirror_url(base, src.name)
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder} ({exc.strerror or exc})") from None
    for remote in src.files:
        target = folder / remote.name
        if target.is_file() and _verified(target, remote):
            if log:
                log(f"{target}: already there, SHA-256 verified")
            continue
        url = base + remote.name
        if log:
            log(f"downloading {url}")
        _download(url, target, remote, timeout, progress, src.name)
    return folder
