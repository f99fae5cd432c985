"""Connections to the DuckDB warehouse. DuckDB lets one process write a file, or several read it, never
both at once: a reader (findings, the end-of-run summary, the report) that opens it while a run's writer
holds it, or the other way round, waits a bounded time for the lock and then fails with a message that
names the file and the process holding it, never a raw DuckDB error."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_WAIT_S = 60.0
_POLL_S = 0.2


class WarehouseBusy(RuntimeError):
    pass


@contextlib.contextmanager
def connect(path: Path, *, read_only: bool, wait_s: float | None = None) -> Iterator:
    """An open connection to `path`, held only for the block: readers read and let go, so that a writer
    waits at most for one read. `wait_s`: how long to wait for another process's lock (LOCK_WAIT_S)."""
    import duckdb

    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while True:
        try:
            connection = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise WarehouseBusy(f"the warehouse {path} cannot be opened: {error}") from None
            if time.monotonic() >= deadline:
                raise WarehouseBusy(_busy_message(path, str(error), wait_s, read_only)) from None
            time.sleep(_POLL_S)
    try:
        yield connection
    finally:
        connection.close()


def _busy_message(path: Path, error: str, wait_s: float, read_only: bool) -> str:
    holder = re.search(r"PID (\d+)", error)
    who = f"process {holder[1]}" if holder else "another process"
    doing = "read" if read_only else "write"
    return (f"the warehouse {path} is held by {who} (a `calib-assets run` writing it, or a program reading "
            f"it); waited {wait_s:.0f} s to {doing} it: try again once that process is done")
