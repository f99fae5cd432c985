"""Run a whole study into a persistent Dagster instance, stage by stage and partition by partition,
showing progress; afterwards `dagster dev` shows every materialization and its lineage."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

import dagster as dg

from calib_assets import timing
from calib_assets.defs.jobs import stages
from calib_assets.defs.partitions import StudyPartitions
from calib_assets.findings import findings_summary, report_dir
from calib_assets.findings.build_status import BuildStatus, build_status
from calib_assets.findings.tables import in_percent, paired_test_summary, read_available_marts
from calib_assets.location import check_location_loads, create_location_run, execute_location_run, location_workspace
from calib_assets.naming import STUDY_TAG
from calib_assets.recovery import fail_dead_runs, interruptible, process_tags
from calib_assets.study import Study

REPORT_ASSET = "findings_report"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


class StudyRunFailed(RuntimeError):
    pass


class Stage(NamedTuple):
    job: str
    assets: list[str]
    keys: list[str | None]  # [None]: the job is unpartitioned
    partitions_def: dg.PartitionsDefinition | None


def stage_plan(study: Study, only: Mapping[str, Sequence[str] | None] | None = None) -> list[Stage]:
    """The study's stages in dependency order, each with the partitions to run: all of them, or with `only`
    (job name -> its partition keys, None for all) those jobs' alone, each name and key checked first."""
    plan = [Stage(name, assets, list(partitions_def.get_partition_keys()) if partitions_def else [None],
                  partitions_def)
            for name, assets, partitions_def in stages(StudyPartitions.from_study(study))]
    if only is None:
        return plan
    unknown = sorted(set(only) - {stage.job for stage in plan})
    if unknown:
        raise ValueError(f"unknown job(s) {unknown}; a study's jobs, in order: {[stage.job for stage in plan]}")
    selected = []
    for stage in (stage for stage in plan if stage.job in only):
        keys = list(only[stage.job] or stage.keys)
        if stray := [key for key in keys if key not in stage.keys]:
            raise ValueError(f"{stage.job} has no partition {stray[0]!r} in study {study.name!r}")
        selected.append(stage._replace(keys=keys))
    return selected


def run_study(defs: dg.Definitions, study: Study, instance: dg.DagsterInstance,
              echo: Callable[[str], None] = print, log_path: Path | None = None,
              only: Mapping[str, Sequence[str] | None] | None = None, from_location: bool = False) -> None:
    """Materialize every partition in dependency order (or the stages and partitions `only` names), one run
    per partition executed in this process; stop at the first failure.

    With `from_location` each run is created from the code location that `dagster dev` loads (location.py:
    the UI lists it under that location and re-executes it without warning), which must load `study`;
    without, from `defs` alone (a study that is not on disk, a notebook). What the steps print themselves
    (dbt's output among it) goes to `log_path` (default: a file in the instance's directory) so that the
    progress lines stay readable.
    """
    log_path = Path(log_path or Path(instance.root_directory or ".") / f"calib-assets-{study.name}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if from_location:
        check_location_loads(study)
        with _quiet_workspace(instance, log_path) as workspace:
            _run_plan(defs, study, instance, echo, log_path, only, workspace)
    else:
        _run_plan(defs, study, instance, echo, log_path, only, None)


@contextlib.contextmanager
def _quiet_workspace(instance: dg.DagsterInstance, log_path: Path) -> Iterator:
    """The location's workspace, its code server started and stopped with its output going to the step log."""
    workspace_context = location_workspace(instance)
    with step_output_to(log_path):
        workspace = workspace_context.__enter__()
    try:
        yield workspace
    finally:
        with step_output_to(log_path):
            workspace_context.__exit__(None, None, None)


def _run_plan(defs: dg.Definitions, study: Study, instance: dg.DagsterInstance, echo: Callable[[str], None],
              log_path: Path, only: Mapping[str, Sequence[str] | None] | None, workspace) -> None:
    plan = stage_plan(study, only)
    total = sum(len(stage.keys) for stage in plan)
    done, started = 0, time.perf_counter()
    stage_seconds: dict[str, float] = {}
    timing.reset()
    echo(f"study {study.name!r}: {total} runs in {len(plan)} stages (Dagster home: {instance.root_directory}; "
         f"step output: {log_path})")
    tags = {STUDY_TAG: study.name, **process_tags()}
    for stage in plan:
        job_name, assets, keys, _ = stage
        job = defs.resolve_job_def(job_name)
        for key in keys:
            done += 1
            step_started = time.perf_counter()
            with step_output_to(log_path) as terminal:
                # both lambdas run within this iteration (interruptible returns when the run ends): B023 is moot
                result = interruptible(
                    lambda: _execute(job, instance, workspace, stage, key, tags),  # noqa: B023
                    on_interrupt=lambda: _interrupted(instance, job_name, key, terminal))  # noqa: B023
            seconds = time.perf_counter() - step_started
            label = f"[{done:>3}/{total}] {job_name:<22} {key or '(unpartitioned)':<45}"
            if not result.success:
                echo(f"{label} FAILED after {seconds:.1f}s")
                raise StudyRunFailed(f"{failure_message(result.all_events, job_name, key)} (full trace: {log_path}; "
                                     f"run {result.run_id[:8]} in the Dagster UI)")
            reused = _all_reused(result)
            echo(f"{label} {'reused' if reused else 'done'} in {seconds:5.1f}s "
                 f"(elapsed {time.perf_counter() - started:6.1f}s)")
            stage_seconds[job_name] = stage_seconds.get(job_name, 0.0) + seconds
            if REPORT_ASSET in assets and not _materialized(result, REPORT_ASSET):
                _write_report_after_skipped_marts(echo)
    echo(where_time_went(stage_seconds, timing.tally()))


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, workspace, stage: Stage, key: str | None,
             tags: dict[str, str]):
    """One run of `stage`'s job (`job`) for partition `key`, in this process: created from the code location
    when there is a workspace, else from `job` alone."""
    if workspace is None:
        return job.execute_in_process(instance=instance, partition_key=key, run_config=QUIET, raise_on_error=False,
                                      tags=tags)
    run = create_location_run(instance, workspace, stage.job, tags, stage.partitions_def, key)
    return execute_location_run(job, run, instance)


def where_time_went(stage_seconds: dict[str, float], kinds: dict[str, tuple[float, int]]) -> str:
    """Seconds per stage (with its share of the whole) and per step kind (spans the steps tallied in this
    process; `timing`), as the lines `make run` ends with."""
    total = sum(stage_seconds.values())
    lines = [f"\nWhere the time went ({total:.1f} s in all):", "  per stage:"]
    lines += [f"    {stage:<34} {seconds:8.1f} s  {seconds / total if total else 0:6.1%}"
              for stage, seconds in stage_seconds.items()]
    if kinds:
        lines.append("  per step kind (each part of a step; reused steps cost nothing):")
        lines += [f"    {kind:<58} {seconds:8.1f} s  in {count:>4} call(s)"
                  for kind, (seconds, count) in sorted(kinds.items(), key=lambda item: -item[1][0])]
    return "\n".join(lines)


@contextlib.contextmanager
def step_output_to(log_path: Path) -> Iterator[TextIO]:
    """Everything a step writes goes to the step log: Python's stdout and stderr, and file descriptors 1 and
    2, which also catch C extensions and the logging handlers and progress bars that took hold of the
    terminal's streams at import (lm-eval's, transformers', datasets'). Yields a stream to the terminal's
    stderr, for what must still reach the user during the step."""
    with open(log_path, "a") as log:
        _flush(sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        terminal = os.fdopen(os.dup(saved[2]), "w")
        try:
            for fd in saved:
                os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield terminal
        finally:
            _flush(sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, log)
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            terminal.close()


def _flush(*streams) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):  # a closed or detached stream has nothing to flush
            stream.flush()


def _interrupted(instance: dg.DagsterInstance, job_name: str, key: str | None, terminal: TextIO) -> None:
    """On Ctrl-C or SIGTERM during a step (its output goes to the step log: this goes to the terminal)."""
    lines = fail_dead_runs(instance, only_pid=os.getpid())
    print(f"\ninterrupted during {job_name} [{key or 'unpartitioned'}]: " + ("; ".join(lines) or "no run was live"),
          file=terminal, flush=True)


def _materialized(result, asset: str) -> bool:
    return any(event.asset_key == dg.AssetKey(asset) for event in result.get_asset_materialization_events())


def _write_report_after_skipped_marts(echo: Callable[[str], None]) -> None:
    """Dagster skips the report when dbt skipped a mart it reads (after a failed test upstream of the marts);
    the report on disk would then be the previous one, so it is written here, naming what failed."""
    from calib_assets.artifacts import artifact_root
    from calib_assets.findings import write_report
    from calib_assets.steps import warehouse_path

    root = artifact_root()
    report = write_report(warehouse_path(root), report_dir(root))
    echo(f"      findings_report was skipped (dbt built no {', '.join(report.status.unbuilt_models) or 'mart'}); "
         f"wrote {report.index} outside Dagster, naming the failed tests")


def _all_reused(result) -> bool:
    flags = [event.materialization.metadata.get("reused") for event in result.get_asset_materialization_events()]
    flags = [flag.value for flag in flags if flag is not None]
    return bool(flags) and all(flags)


def failure_message(events, job_name: str, key: str | None) -> str:
    """The first failed step's error, in one line, from a run's events."""
    for event in events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            cause = error.cause or error
            first, *more = cause.message.strip().splitlines() or [""]
            first = re.sub(rf"^[\w.]*{cause.cls_name}: ", "", first)  # the message repeats the qualified class
            return (f"{job_name} [{key}] failed in step {event.step_key}: {cause.cls_name}: {first}"
                    + (" (...)" if more else ""))
    return f"{job_name} [{key}] failed"


def print_findings(duckdb_path: Path, echo: Callable[[str], None] = print) -> BuildStatus:
    """Spread across calibration sets per method and source, the baselines; last, the headline table, the
    last dbt build's failed tests with their rows, and the report's path (every mart, per evaluation dataset
    and metric, is in the warehouse and the report). Returns that build's status: a caller exits non-zero
    when it has problems."""
    marts, missing = read_available_marts(duckdb_path, ["mart_src_spread", "mart_paired_test",
                                                        "mart_baselines"])
    with _pandas_wide():
        if "mart_src_spread" in marts:
            summary = seed_spread_summary(marts["mart_src_spread"])
            if not summary.empty:
                echo("\nAcross calibration sets, per method and source: perplexity (mean over the held-out sets) "
                     "next to task accuracy (%); range in the metric's units, cv = std / mean in %:")
                echo(summary.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}"))
        else:
            echo(f"\nAcross calibration sets, per method and source (mart_src_spread): not available: "
                 f"{missing['mart_src_spread']}")
        if "mart_paired_test" in marts:
            paired = paired_test_summary(marts["mart_paired_test"])
            if not paired.empty:
                echo("\nBest against worst calibration set (over all sets) on the same task examples: is the "
                     "difference beyond evaluation noise? (paired bootstrap over examples, "
                     "mart_paired_test)")
                echo(paired.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        else:
            echo(f"\nBest against worst calibration set (mart_paired_test): not available: "
                 f"{missing['mart_paired_test']}")
        echo("\nDense model and calibration-free controls (mart_baselines; accuracies and answer flips in %):")
        if "mart_baselines" in marts:
            baselines = in_percent(marts["mart_baselines"].sort_values(["method", "eval_dataset"]), ["value"])
            echo(baselines[["method", "eval_dataset", "metric", "value"]].to_string(
                index=False, na_rep="-", float_format=lambda v: f"{v:.2f}"))
        else:
            echo(f"not available: {missing['mart_baselines']}")
    echo(f"\nDuckDB warehouse: {duckdb_path} (per-dataset spread: mart_spread)")
    echo("\n" + findings_summary(duckdb_path, report_dir(duckdb_path.parent) / "index.html"))
    return build_status(duckdb_path)


def seed_spread_summary(spread):
    """The rows of mart_src_spread (a DataFrame) as one row per (method, calibration source), or per
    (method, variant, source) when a method has several variants (models, settings): the mean, range and
    coefficient of variation across the source's calibration sets of the held-out perplexity averaged over
    the evaluation datasets ("ppl") and of each task's accuracy (in %). The statistics are the mart's (dbt
    defines tasks and the spread); this only lays them out. Sets that score the same (within float noise)
    have range and cv 0; one set, or a mean of 0, has no cv (NaN). Empty without held-out perplexity."""
    import pandas as pd

    if not (spread["kind"] == "perplexity_average").any():
        return pd.DataFrame()
    several = spread.groupby(["method", "calibration_source"])["variant"].nunique().max() > 1
    keys = ["method", "variant", "calibration_source"] if several else ["method", "calibration_source"]
    groups = spread.drop_duplicates(keys).sort_values(keys).set_index(keys)
    tasks = sorted(set(spread.loc[spread["kind"] == "task", "eval_dataset"]))
    columns = {"sets": groups["source_sets"].astype(int)}
    for name, kind, dataset, scale in [("ppl", "perplexity_average", "perplexity_average", 1),
                                       *[(f"{task} acc", "task", task, 100) for task in tasks]]:
        score = spread[(spread["kind"] == kind) & (spread["eval_dataset"] == dataset)]
        score = score.set_index(keys).reindex(groups.index)
        columns[name] = scale * score["mean_value"].astype(float)
        # a score the source has no sets for: no mean, range 0 (as the summary has always shown it)
        columns[f"{name} range"] = (scale * score["range_value"].astype(float)).fillna(0.0)
        columns[f"{name} cv%"] = 100 * score["cv"].astype(float)
    return pd.DataFrame(columns).reset_index().rename(columns={"calibration_source": "source"})


def _pandas_wide():
    import pandas as pd

    return pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500)
