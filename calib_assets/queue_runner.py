"""Run a whole study through Dagster's run queue, on a Ray cluster: one ordinary run per partition (the same
job, code location and tags as a run launched from the UI), many at once, each step a Ray job.

Stages run in dependency order; within one, the runner keeps as many runs in the queue as the cluster has
GPUs (each run holds at most one GPU step at a time), and the daemon's QueuedRunCoordinator launches them.
The runner starts that daemon itself, with the code location on the Ray executor, and stops it at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from calib_assets.location import WORKSPACE_FILE, check_location_loads, create_location_run, location_workspace
from calib_assets.naming import STUDY_TAG
from calib_assets.runner import StudyRunFailed, failure_message, stage_plan
from calib_assets.scale_out import Cluster, ray_location_env
from calib_assets.study import Study

EXECUTOR_TAG = "calib_assets/executor"
DAEMON_START_TIMEOUT_S = 120
POLL_S = 0.5
HEARTBEAT_TOLERANCE_S = 10


def run_study_on_ray(study: Study, instance: dg.DagsterInstance, cluster: Cluster,
                     echo: Callable[[str], None] = print, log_path: Path | None = None,
                     only: Mapping[str, Sequence[str] | None] | None = None, executor: str = "ray") -> None:
    """Materialize every partition (or those `only` names, as in runner.run_study), stage by stage, on
    `cluster` with `executor` (ray or ray-jobs: scale_out.EXECUTORS); stop submitting at the first failed run."""
    if instance.is_ephemeral:
        raise ValueError("running on Ray needs a persistent Dagster instance (DAGSTER_HOME): the daemon, the run "
                         "workers and the steps on Ray all read and write it")
    check_location_loads(study)
    slots = cluster.run_slots(study.compute.device)
    queue_limit = _run_queue_limit(instance)
    plan = stage_plan(study, only)
    total = sum(len(stage.keys) for stage in plan)
    log_path = Path(log_path or Path(instance.root_directory or ".") / f"calib-assets-{study.name}-ray.log")
    echo(f"study {study.name!r}: {total} runs in {len(plan)} stages on the Ray cluster at {cluster.address} "
         f"({cluster.nodes} node(s), {cluster.gpus} GPU(s), {cluster.cpus} CPU(s)): up to {slots} runs at once "
         f"(Dagster home: {instance.root_directory}; daemon and step output: {log_path})")
    if queue_limit is not None and queue_limit < slots:
        echo(f"note: the instance's run queue starts at most {queue_limit} runs at once "
             f"(concurrency.runs.max_concurrent_runs in dagster.yaml), fewer than the cluster's {slots}")
    location_env = {**ray_location_env(cluster.address, executor), "DAGSTER_HOME": instance.root_directory}
    tags = {STUDY_TAG: study.name, EXECUTOR_TAG: executor}
    with (_environment(location_env), _daemon(instance, dict(os.environ), log_path),
          location_workspace(instance) as workspace):
        progress = _Progress(total, echo)
        for stage in plan:
            _run_stage(instance, workspace, stage.job, stage.keys, stage.partitions_def, tags, slots, progress)


def _run_stage(instance, workspace, job_name: str, keys: list, partitions_def, tags: dict[str, str],
               slots: int, progress: _Progress) -> None:
    pending, failed = list(keys), None
    running: dict[str, tuple[str | None, float]] = {}  # run id -> (partition key, start)
    while pending or running:
        while pending and len(running) < slots and failed is None:
            key = pending.pop(0)
            run = create_location_run(instance, workspace, job_name, tags, partitions_def, key)
            running[instance.submit_run(run.run_id, workspace).run_id] = (key, time.perf_counter())
        time.sleep(POLL_S)
        for run_id, (key, started) in list(running.items()):
            run = instance.get_run_by_id(run_id)
            if not run.is_finished:
                continue
            del running[run_id]
            ok = run.status == dg.DagsterRunStatus.SUCCESS
            progress.line(job_name, key, time.perf_counter() - started,
                          ("reused" if _all_reused(instance, run_id) else "done") if ok else "FAILED")
            if not ok and failed is None:
                failed = (f"{failure_message(_events(instance, run_id), job_name, key)} "
                          f"(run {run_id[:8]} in the Dagster UI)")
        if failed and not running:
            raise StudyRunFailed(failed)


class _Progress:
    def __init__(self, total: int, echo: Callable[[str], None]):
        self.total, self.done, self.echo, self.started = total, 0, echo, time.perf_counter()

    def line(self, job_name: str, key: str | None, seconds: float, outcome: str) -> None:
        self.done += 1
        label = f"[{self.done:>3}/{self.total}] {job_name:<22} {key or '(unpartitioned)':<45}"
        self.echo(f"{label} {outcome} in {seconds:5.1f}s (elapsed {time.perf_counter() - self.started:6.1f}s)")


@contextmanager
def _environment(updates: Mapping[str, str]):
    """`updates` in os.environ while the runner works (its daemon and code servers inherit them), then the
    caller's environment as it was."""
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _daemon(instance: dg.DagsterInstance, env: dict[str, str], log_path: Path):
    """A dagster-daemon of this instance, whose run queue launches the runs; refuse if one already runs,
    since its code location may not be on the Ray executor."""
    if _live_daemon(instance):
        raise StudyRunFailed(
            f"a Dagster daemon already serves the instance at {instance.root_directory} (`dagster dev`?); "
            "`calib-assets run --ray` starts its own, on the Ray executor: stop that one, or launch the jobs "
            "from its UI started with `make dev EXECUTOR=ray`")
    daemon_bin = Path(sys.executable).with_name("dagster-daemon")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        process = subprocess.Popen([str(daemon_bin), "run", "-w", str(WORKSPACE_FILE)], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=WORKSPACE_FILE.parent, start_new_session=True)
    try:
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while not _live_daemon(instance):
            if process.poll() is not None or time.monotonic() > deadline:
                raise StudyRunFailed(f"dagster-daemon did not start (exit {process.poll()}); see {log_path}")
            time.sleep(POLL_S)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        instance.wipe_daemon_heartbeats()  # ours, which would read as live for a while: none other was live


def _live_daemon(instance: dg.DagsterInstance) -> bool:
    from dagster._daemon.controller import get_daemon_statuses

    # a live daemon heartbeats every 30 s; Dagster's own tolerance (30 min) would count one stopped minutes ago
    statuses = get_daemon_statuses(instance, ["QUEUED_RUN_COORDINATOR"], ignore_errors=True,
                                   heartbeat_tolerance_seconds=HEARTBEAT_TOLERANCE_S)
    return any(status.healthy for status in statuses.values())


def _run_queue_limit(instance: dg.DagsterInstance) -> int | None:
    config = instance.get_concurrency_config().run_queue_config
    limit = config.max_concurrent_runs if config else None
    return None if limit is None or limit < 0 else limit


def _events(instance: dg.DagsterInstance, run_id: str) -> list:
    return [entry.dagster_event for entry in instance.all_logs(run_id) if entry.dagster_event]


def _all_reused(instance: dg.DagsterInstance, run_id: str) -> bool:
    flags = [event.event_specific_data.materialization.metadata.get("reused")
             for event in _events(instance, run_id) if event.is_step_materialization]
    flags = [flag.value for flag in flags if flag is not None]
    return bool(flags) and all(flags)
