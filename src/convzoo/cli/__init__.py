"""The ``convzoo`` command line: thin commands over the library.

Each command lives in its own module of this package and offers
``register(subparsers)``, which adds its parser and sets ``run(args) -> int``.
Exit codes: 0 success, 2 a user mistake or bad input (one line on stderr),
1 an internal failure.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ..errors import STORAGE_ERRNOS, ConvzooError

# Command modules, in the order `convzoo --help` lists them.
COMMANDS = [
    "list",
    "summary",
    "train",
    "eval",
    "predict",
    "export",
    "compare",
    "tune",
    "report",
    "bench",
    "data",
    "explain",
    "ablate",
    "weights",
]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="convzoo",
        description="The classic CNNs: build, inspect, train, evaluate, export, compare.",
    )
    parser.add_argument("--version", action="version", version=f"convzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        module_name = f"{__name__}.{name}_cmd"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except ConvzooError as exc:
        sys.stderr.write(f"convzoo {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"convzoo {args.command}: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        # e.g. a full disk while writing a plot or a report: the user's to fix
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"convzoo {args.command}: error: {exc.strerror}{where}\n")
        return 2
