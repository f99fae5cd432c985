"""A plain-data picture of the whole Dagster graph of a study (asset keys, deps with their partition
mappings, partitions, groups, code versions, kinds, owners, automation, checks, jobs, schedules, sensors),
so that any lineage change shows up in review as a diff of calib_assets_tests/snapshots/*.json.

Regenerate after an intended change: `make snapshots`
(UPDATE_SNAPSHOTS=1 pytest calib_assets_tests/test_graph_snapshot.py).
"""

from __future__ import annotations

from typing import Any

import dagster as dg


def graph_snapshot(defs: dg.Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    checks: dict[str, dict[str, bool]] = {}
    for assets_def in defs.assets or []:
        for spec in getattr(assets_def, "check_specs", []):
            checks.setdefault(spec.asset_key.to_user_string(), {})[spec.key.name] = spec.blocking
    assets = {}
    for spec in sorted(defs.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string()):
        key = spec.key
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": {parent.to_user_string(): repr(graph.get_partition_mapping(key, parent))
                     for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string())},
            "partitions": _partitions(spec.partitions_def),
            "group": spec.group_name,
            "code_version": spec.code_version,
            "kinds": sorted(spec.kinds),
            "owners": sorted(spec.owners),
            "automation": type(spec.automation_condition).__name__ if spec.automation_condition else None,
            "checks": dict(sorted(checks.get(key.to_user_string(), {}).items())),
        }
    # Definitions types jobs and schedules as resolved-or-unresolved unions; the study's are
    # define_asset_job's (with .selection) and cron ScheduleDefinitions
    job_defs: list[Any] = sorted(defs.jobs or [], key=lambda j: j.name)
    schedules: list[Any] = sorted(defs.schedules or [], key=lambda s: s.name)
    jobs = {}
    for job in job_defs:
        jobs[job.name] = {"assets": sorted(k.to_user_string() for k in job.selection.resolve(graph)),
                          "partitions": _partitions(job.partitions_def)}
    return {
        "assets": assets,
        "jobs": jobs,
        "schedules": {s.name: {"cron": s.cron_schedule, "job": s.job_name, "default": s.default_status.value}
                      for s in schedules},
        "sensors": {s.name: {"default": s.default_status.value}
                    for s in sorted(defs.sensors or [], key=lambda s: s.name)},
    }


def _partitions(partitions_def) -> Any:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return {dim.name: dim.partitions_def.get_partition_keys() for dim in partitions_def.partitions_defs}
    return partitions_def.get_partition_keys()
