"""Crash recovery for `calib-assets run`, which executes its runs in its own process: a run whose process
died (kill -9, a lost machine) stays STARTED in the Dagster instance and keeps its pool slots, so the next
run would wait for them forever. Each run records its process in its tags; before starting, the next
`calib-assets run` fails the runs whose process is gone, frees the slots that no live run holds, and
removes the temporaries of dead steps. One `calib-assets run` at a time holds an artifact root."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.tags import PARENT_RUN_ID_TAG

from calib_assets.artifacts import process_alive, remove_stale_temporaries

PID_TAG, HOST_TAG, STARTED_TAG = "calib_assets/pid", "calib_assets/host", "calib_assets/process_started"
LIVE_STATUSES = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                 dg.DagsterRunStatus.CANCELING]


def process_started(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux; None elsewhere): with the pid, it tells
    a process apart from a later one that reuses its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """Tags naming the process that executes a run (in process, as `calib-assets run` does)."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), STARTED_TAG: process_started(pid) or ""}


def runner_pid(tags: Mapping[str, str]) -> int | None:
    """The pid of the `calib-assets run` process on this host that executes the run with these tags; None for
    runs of another host, without the tags, or re-executed (launched from the UI with its parent's tags
    among them): the daemon's run monitoring watches those."""
    if PID_TAG not in tags or tags.get(HOST_TAG) != socket.gethostname() or PARENT_RUN_ID_TAG in tags:
        return None
    return int(tags[PID_TAG])


def owner_is_gone(tags: Mapping[str, str]) -> bool:
    """Whether the `calib-assets run` process that executes this run (runner_pid) has ended."""
    pid = runner_pid(tags)
    if pid is None:
        return False
    if not process_alive(pid):
        return True
    started = tags.get(STARTED_TAG)
    return bool(started) and process_started(pid) != started  # the pid now belongs to another process


def fail_dead_runs(instance: dg.DagsterInstance, only_pid: int | None = None) -> list[str]:
    """Mark failed the live-looking runs whose process is gone (or, with `only_pid`, those of that process)
    and free their pool slots; one line per run."""
    lines = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=LIVE_STATUSES)):
        run, tags = record.dagster_run, record.dagster_run.tags
        if only_pid is not None and runner_pid(tags) != only_pid:
            continue
        if only_pid is None and not owner_is_gone(tags):
            continue
        partition = tags.get("dagster/partition", "(unpartitioned)")
        why = "was interrupted" if only_pid is not None else f"lost its process (pid {tags[PID_TAG]})"
        instance.report_run_failed(run, f"calib-assets: the run {why}; marked failed and its pool slots freed")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        lines.append(f"run {run.run_id[:8]} ({run.job_name} [{partition}]) {why}: marked failed, slots freed")
    return lines


def free_orphaned_slots(instance: dg.DagsterInstance) -> list[str]:
    """Free pool slots held by runs that have ended or no longer exist (e.g. deleted while STARTED)."""
    lines = []
    for run_id in instance.event_log_storage.get_concurrency_run_ids():
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            state = "deleted" if run is None else run.status.value.lower()
            lines.append(f"pool slots of {state} run {run_id[:8]} freed")
    return lines


def recover(instance: dg.DagsterInstance, root: Path) -> list[str]:
    """Everything a killed run left behind: its runs, its pool slots, its temporaries under `root`."""
    lines = fail_dead_runs(instance) + free_orphaned_slots(instance)
    removed = remove_stale_temporaries(root)
    if removed:
        lines.append(f"removed {len(removed)} temporary folder(s) of ended processes: "
                     + ", ".join(str(path.relative_to(root)) for path in removed[:5])
                     + (" ..." if len(removed) > 5 else ""))
    return lines


def interruptible(execute: Callable[[], Any], on_interrupt: Callable[[], None]) -> Any:
    """Run `execute` (a Dagster execution) in a thread, so that Ctrl-C and SIGTERM reach this process at once:
    Dagster defers interrupts to its own checkpoints, which a long step or a step waiting for a pool slot
    does not reach. On an interrupt, `on_interrupt` runs and the process exits with 130; what the step was
    writing is a temporary (artifact writes are atomic), removed by the next run."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return execute()
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = execute()
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=target, name="calib-assets-run", daemon=True)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        on_interrupt()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
