"""Valid ranges of numeric settings, checked the same way by the library and, at parse time, by the CLI."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from landcover.errors import LandcoverError


@dataclass(frozen=True)
class Bound:
    """A range for a number: `low` (excluded when `low_open`) up to `high`, whole numbers only with `integer`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        """The range in words, e.g. 'a whole number >= 1' or 'a number in (0, 1]'."""
        kind = "a whole number" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{kind} <= {self.high:g}" if self.high is not None else kind

    def contains(self, value: float) -> bool:
        """Whether a value lies in the range."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def check(self, value: float, name: str) -> float:
        """The value, or a LandcoverError naming the setting and its valid range."""
        if not self.contains(value):
            raise LandcoverError(f"{name} {value!r} is out of range: it must be {self.describe()}")
        return value

    def parse(self, text: str) -> float:
        """An argparse `type`: the text as a number in the range, or an error saying the range."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.describe()}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {self.describe()}")
        return value


COUNT = Bound(1, integer=True)
"""1, 2, 3, ...: sizes, counts of workers, shards, epochs."""
WHOLE = Bound(0, integer=True)
"""0, 1, 2, ...: seeds, counts where 0 means none."""
POSITIVE = Bound(0, low_open=True)
"""Any number > 0: lengths, learning rates."""
NON_NEGATIVE = Bound(0)
FRACTION = Bound(0, 1)
"""[0, 1]: shares and opacities."""
SHARE = Bound(0, 1, low_open=True)
"""(0, 1]: a fraction that must keep something."""
