"""The code location as `dagster dev` loads it (workspace.yaml), and runs created from it as the UI's
launchpad creates them: the run's origin is the location and its job snapshot the location's, so the UI
shows it under that location and re-executes it without warning. `calib-assets run` executes such runs in
its own process (runner.py), the Ray runner hands them to the run queue (queue_runner.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from calib_assets.study import STUDY_ENV, Study, load_study

WORKSPACE_FILE = Path(__file__).resolve().parents[1] / "workspace.yaml"


def check_location_loads(study: Study) -> None:
    """The location's definitions load the study named by $CALIB_ASSETS_STUDY: refuse to create any run if
    that is not the study given here."""
    located = load_study()
    if located.model_dump() != study.model_dump():
        raise ValueError(f"the code location loads study {located.name!r} (${STUDY_ENV}="
                         f"{os.environ.get(STUDY_ENV, '(unset)')!r}), not the study {study.name!r} given to run: "
                         f"set ${STUDY_ENV} to its name or YAML path")


@contextmanager
def location_workspace(instance: dg.DagsterInstance) -> Iterator:
    """The workspace of workspace.yaml (its code server is a subprocess, started here and stopped after)."""
    from dagster import __version__
    from dagster._cli.workspace.cli_target import get_workspace_from_cli_opts
    from dagster_shared.cli import WorkspaceOpts

    opts = WorkspaceOpts(workspace=[str(WORKSPACE_FILE)])
    with get_workspace_from_cli_opts(instance, __version__, opts) as workspace:
        yield workspace


def create_location_run(instance: dg.DagsterInstance, workspace, job_name: str, tags: Mapping[str, str],
                        partitions_def: dg.PartitionsDefinition | None = None,
                        partition_key: str | None = None) -> dg.DagsterRun:
    """A NOT_STARTED run of the location's job `job_name` with `tags` and, given one, the tags of its
    partition `partition_key` of `partitions_def`; its config empty as the launchpad's is."""
    from dagster._cli.job import _create_run
    from dagster._cli.workspace.cli_target import (
        get_code_location_from_workspace,
        get_remote_job_from_remote_repo,
        get_remote_repository_from_code_location,
    )

    location = get_code_location_from_workspace(workspace, None)
    repository = get_remote_repository_from_code_location(location, None)
    job = get_remote_job_from_remote_repo(repository, job_name)
    if partition_key is not None and partitions_def is not None:
        tags = {**tags, **partitions_def.get_tags_for_partition_key(partition_key)}
    return _create_run(instance=instance, code_location=location, remote_repo=repository, remote_job=job,
                       run_config={}, tags=dict(tags), op_selection=None, run_id=None)


def execute_location_run(job_def: dg.JobDefinition, run: dg.DagsterRun, instance: dg.DagsterInstance):
    """Execute `run` (from create_location_run) in this process, its steps one after another with the
    in-process executor, on `job_def`: this process's copy of the location's job. Returns Dagster's result
    (success, run_id, all_events, get_asset_materialization_events)."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import execute_run

    in_process = job_def.as_ephemeral_job(resource_defs={}, input_values={})  # the in-process executor
    return execute_run(InMemoryJob(in_process), run, instance, raise_on_error=False)
