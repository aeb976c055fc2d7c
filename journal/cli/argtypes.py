"""argparse value types shared by the ``journal`` command and the demo: a bad value is one
clear line ("--limit: must be >= 0, got -3"), never a traceback."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int in ``low..high`` (no upper bound when ``high`` is None)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if number < low or (high is not None and number > high):
            bound = f"must be >= {low}" if high is None else f"must be {low}..{high}"
            raise argparse.ArgumentTypeError(f"{bound}, got {number}")
        return number

    return parse


def seconds(high: float = math.inf) -> Callable[[str], float]:
    """A duration in seconds, ``0..high`` (NaN is refused)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not 0 <= number <= high:  # also refuses NaN
            bound = "must be >= 0" if high == math.inf else f"must be 0..{high:g}"
            raise argparse.ArgumentTypeError(f"{bound}, got {value}")
        return number

    return parse
