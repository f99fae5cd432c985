"""Where a process's time goes: a process-wide tally of named spans (seconds and count per name), which
the steps add to and `calib-assets run` prints at the end (per step kind: loading, calibration passes,
method math, each part of an evaluation). Spans may nest; each name is tallied on its own."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

_tally: dict[str, list[float]] = {}  # name -> [seconds, count]


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        entry = _tally.setdefault(name, [0.0, 0])
        entry[0] += time.perf_counter() - started
        entry[1] += 1


def tally() -> dict[str, tuple[float, int]]:
    """name -> (seconds, count) since the last reset, in the order the names first appeared."""
    return {name: (seconds, int(count)) for name, (seconds, count) in _tally.items()}


def reset() -> None:
    _tally.clear()
