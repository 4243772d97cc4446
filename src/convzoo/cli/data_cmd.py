"""convzoo data where|fetch: where the datasets are, and verified downloads of them."""

from __future__ import annotations

import sys
from pathlib import Path

from ..data import locate
from .common import positive_float


def register(sub) -> None:
    p = sub.add_parser("data", help="find datasets (where) or download them (fetch)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True

    w = actions.add_parser(
        "where",
        help="say where each dataset was found, or would be put",
        description="Print where DATASET was found (exit 0), or one line saying how to get "
        "it (exit 2). Without DATASET, a table of every known dataset.",
    )
    w.add_argument("dataset", nargs="?", help="fashion-mnist, mnist, cifar10 or an image folder")
    w.add_argument(
        "--data-dir",
        help="search this folder first (default: $CONVZOO_DATA, the user cache, then "
        "system-wide copies)",
    )
    w.set_defaults(run=run_where)

    f = actions.add_parser(
        "fetch",
        help="download a dataset's official files to the cache, checking their SHA-256",
        description="Download DATASET's official files into the user cache (or --dest), "
        "checking the SHA-256 of every file.",
    )
    f.add_argument("dataset", help="fashion-mnist, mnist or cifar10")
    f.add_argument(
        "--mirror",
        help="base URL to download from instead of the official one "
        "(default: $CONVZOO_MIRROR; '{dataset}' is replaced by the dataset name)",
    )
    f.add_argument("--dest", help="folder to download into (default: the user cache)")
    f.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help=f"network timeout in seconds (default: {locate.CONNECT_TIMEOUT:g})",
    )
    f.set_defaults(run=run_fetch)


def _known(name: str) -> str | None:
    from ..data.datasets import DATASET_NAMES, _normalise_name

    key = _normalise_name(name)
    return key if key in DATASET_NAMES else None


def run_where(args) -> int:
    from ..data.datasets import DATASET_NAMES
    from ..errors import DataError

    if args.dataset is None:
        width = max(len(n) for n in DATASET_NAMES)
        for name in DATASET_NAMES:
            found = locate.find_dataset(name, args.data_dir)
            if found:
                print(f"{name.ljust(width)}  {found.folder}  ({found.origin})")
            else:
                print(
                    f"{name.ljust(width)}  not found; `convzoo data fetch {name}` puts it in "
                    f"{locate.default_dir(name)}"
                )
        return 0
    key = _known(args.dataset)
    if key is None:
        folder = Path(args.dataset).expanduser()
        if args.data_dir and not folder.is_dir():
            folder = Path(args.data_dir).expanduser() / args.dataset
        if folder.is_dir():
            print(folder.resolve())
            return 0
        from ..data.datasets import load_dataset

        load_dataset(args.dataset, args.data_dir)  # raises the DataError with suggestions
        raise DataError(f"{args.dataset}: not found")  # pragma: no cover
    found = locate.find_dataset(key, args.data_dir)
    if found is None and args.data_dir is not None:
        if not Path(args.data_dir).is_dir():
            raise DataError(f"--data-dir {args.data_dir} is not a folder")
        raise DataError(locate.not_in_data_dir(key, args.data_dir))
    if found is None:
        raise DataError(f"{key} not found; {locate.how_to_get(key)}")
    print(found.folder)
    return 0


def run_fetch(args) -> int:
    from ..errors import DataError

    key = _known(args.dataset)
    if key is None:
        from ..data.datasets import DATASET_NAMES

        raise DataError(
            f"cannot fetch {args.dataset!r}: only {', '.join(DATASET_NAMES)} can be downloaded"
        )
    timeout = args.timeout if args.timeout is not None else locate.CONNECT_TIMEOUT
    if not timeout > 0:
        raise DataError(f"--timeout must be positive, not {args.timeout}")
    folder = locate.fetch(
        key,
        args.dest,
        mirror=args.mirror,
        timeout=timeout,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(folder)
    return 0
