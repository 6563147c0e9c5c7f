"""Progress bars for every loop that shows one: tqdm's bar on a terminal; elsewhere (a log file, a pipe, CI) plain
lines, one every ``PLAIN_INTERVAL_S`` seconds and one at the end, because a redrawn bar written to a file is one
line of carriage-return redraws (tens of KB in a `make demo` log)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

# Seconds between two plain lines of one bar: a long stage says where it is a few times a minute.
PLAIN_INTERVAL_S = 30.0


def progress_bar(iterable: Iterable | None = None, *, desc: str, unit: str, total: int | None = None,
                 initial: int = 0, leave: bool = True, disable: bool = False) -> tqdm | PlainProgress:
    """A bar over ``iterable`` (or advanced by ``update``), with tqdm's arguments of the same names: tqdm's bar
    where stderr is a terminal, a `PlainProgress` where it is not. ``tqdm.write`` prints beside either."""
    kind = tqdm if sys.stderr.isatty() else PlainProgress
    return kind(iterable, desc=desc, unit=unit, total=total, initial=initial, leave=leave, disable=disable)


def format_duration(seconds: float) -> str:
    """``42s``, ``1m02s``, ``1h05m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def plural(unit: str) -> str:
    """``video`` -> ``videos``, ``batch`` -> ``batches``."""
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


class PlainProgress:
    """A bar as plain lines on stderr, e.g. ``segment-videos: 12/30 videos (40%) 1m02s, eta 1m33s``: at most one
    every ``PLAIN_INTERVAL_S`` seconds while it runs, checked when it advances, and one when it closes if it is
    left (``leave``) or has printed one before (a long bar says where it ended) and its last line is not that."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str, unit: str, total: int | None = None,
                 initial: int = 0, leave: bool = True, disable: bool = False) -> None:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable = iterable
        self.desc, self.unit, self.total, self.leave, self.disable = desc, unit, total, leave, disable
        self.n = self.initial = initial
        self.postfix = ""
        self.start = self.last_line = time.monotonic()
        self.last_n: int | None = None  # the count its last line showed
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Advance by ``n``; print a line if the last was ``PLAIN_INTERVAL_S`` or more ago."""
        self.n += n
        if time.monotonic() - self.last_line >= PLAIN_INTERVAL_S:
            self._print()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """``key=value`` pairs shown after the count from the next line on (``refresh`` is tqdm's; unused here)."""
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """The last line, if one is due; later calls do nothing."""
        if not self.closed and (self.leave or self.last_n is not None) and self.n != self.last_n:
            self._print()
        self.closed = True

    def line(self) -> str:
        """Where the bar is now, as one line."""
        elapsed = time.monotonic() - self.start
        if self.total:
            text = f"{self.desc}: {self.n}/{self.total} {plural(self.unit)} ({100 * self.n // self.total}%) " \
                   f"{format_duration(elapsed)}"
            done = self.n - self.initial
            if 0 < done and self.n < self.total:
                text += f", eta {format_duration(elapsed * (self.total - self.n) / done)}"
        else:
            text = f"{self.desc}: {self.n} {plural(self.unit)} {format_duration(elapsed)}"
        return f"{text}, {self.postfix}" if self.postfix else text

    def _print(self) -> None:
        if self.disable or self.closed:
            return
        print(self.line(), file=sys.stderr, flush=True)
        self.last_line = time.monotonic()
        self.last_n = self.n
