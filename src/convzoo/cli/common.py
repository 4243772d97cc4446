"""Argument types shared by several commands."""

from __future__ import annotations

import argparse


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


def _number(kind: type, name: str, minimum: float, strict: bool):
    """An argparse type: a ``kind`` number above (``strict``) or at least ``minimum``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        return value

    parse.__name__ = name.replace(" ", "_")
    return parse


positive_int = _number(int, "a positive integer", 0, strict=True)
positive_float = _number(float, "a positive number", 0.0, strict=True)
non_negative_int = _number(int, "a whole number >= 0", 0, strict=False)
non_negative_float = _number(float, "a number >= 0", 0.0, strict=False)
