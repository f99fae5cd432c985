"""The Dagster layer: thin assets over the library, assembled into one Definitions."""

from __future__ import annotations

import dagster as dg

from calib_assets.study import Study


def build_definitions(study: Study, root: str | None = None, executor: str | None = None) -> dg.Definitions:
    """`executor`: one of scale_out.EXECUTORS (default: $CALIB_ASSETS_EXECUTOR, else local)."""
    from calib_assets.defs.assets import build_assets
    from calib_assets.defs.automation import automation_sensor
    from calib_assets.defs.calibration_data import build_calibration_data_assets
    from calib_assets.defs.dbt import build_dbt_assets, dbt_resource
    from calib_assets.defs.executors import study_executor
    from calib_assets.defs.findings import build_findings_assets
    from calib_assets.defs.jobs import build_jobs, build_reevaluation
    from calib_assets.defs.partitions import StudyPartitions
    from calib_assets.defs.resources import ArtifactStore, Compute, default_root
    from calib_assets.scale_out import executor_choice

    executor = executor or executor_choice()
    parts = StudyPartitions.from_study(study)
    dbt_marts = build_dbt_assets()
    reevaluation_jobs, schedules = build_reevaluation(parts)
    return dg.Definitions(
        assets=[*build_assets(parts, executor), *build_calibration_data_assets(parts), dbt_marts,
                *build_findings_assets()],
        jobs=[*build_jobs(parts, dbt_marts), *reevaluation_jobs],
        schedules=schedules,
        sensors=[automation_sensor()],
        executor=study_executor(executor),
        resources={
            "store": ArtifactStore(root=root or default_root(), study=study.name),
            "compute": Compute(device=study.compute.device, forward_dtype=study.compute.forward_dtype),
            "dbt": dbt_resource(),
        },
        metadata={"study": study.name, "executor": executor},
    )
