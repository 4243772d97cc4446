"""Argument types shared by several commands, the start of the process and the command line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from ..errors import ConfigError
from ..train.options import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Number


def parse_input_size(text: str) -> tuple[int, int, int]:
    """'1x28x28' -> (1, 28, 28); '28' -> (3, 28, 28) is not guessed: C, H and W are required."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"input size must look like CxHxW, e.g. 1x28x28 or 3x224x224, got {text!r}"
        )
    return dims  # type: ignore[return-value]


def _number(rule: Number, name: str):
    """An argparse type: a number that ``rule`` accepts (finite, in its range)."""

    def parse(text: str):
        try:
            value = rule.convert(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        problem = rule.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name
    return parse


positive_int = _number(POSITIVE_INT, "positive_int")
positive_float = _number(POSITIVE, "positive_float")
non_negative_int = _number(NON_NEGATIVE_INT, "non_negative_int")
non_negative_float = _number(NON_NEGATIVE, "non_negative_float")


def add_model_shape_arguments(p) -> None:
    """--input, --small-input, --num-classes and --width: which form of MODEL to build
    when no trained run says so (``convzoo summary``, ``convzoo bench``)."""
    p.add_argument(
        "--input",
        type=parse_input_size,
        default=None,
        metavar="CxHxW",
        help="input size (default: 3x224x224, or 1x28x28 with --small-input)",
    )
    p.add_argument(
        "--small-input", action="store_true", help="the 28-32 px form (default: faithful form)"
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="default: 1000, or 10 with --small-input",
    )
    p.add_argument(
        "--width", type=positive_float, default=1.0, help="channel multiplier (default: 1)"
    )


def model_shape(args) -> tuple[tuple[int, int, int], int]:
    """(input size, number of classes) from :func:`add_model_shape_arguments`' options."""
    size = args.input or ((1, 28, 28) if args.small_input else (3, 224, 224))
    classes = args.num_classes or (10 if args.small_input else 1000)
    return size, classes


def process_start() -> float:
    """The perf_counter() value at which this process started (Linux), else now.

    A time budget counts from here, so that it covers start-up and imports too.
    """
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        if 0 <= age < 3600:
            return time.perf_counter() - age
    except (OSError, ValueError, IndexError):
        pass
    return time.perf_counter()


def command_line(argv: list[str]) -> str:
    """``convzoo ARGV...`` as a shell would read it back."""
    return shlex.join(["convzoo", *argv])


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda`` for the commands that run a trained model."""
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run the model (default: auto = cuda when available)",
    )


def stderr_writers(command: str, quiet: bool = False):
    """``(log, warn)`` for a command: progress lines on stderr unless ``quiet``, and
    warnings that name the command, always."""

    def log(line: str) -> None:
        if not quiet:
            sys.stderr.write(line + "\n")

    def warn(line: str) -> None:
        sys.stderr.write(f"convzoo {command}: {line}\n")

    return log, warn
