"""The code location's executor: Dagster's multiprocess executor (local, the default), warm Ray workers
($CALIB_ASSETS_EXECUTOR=ray, defs/ray_steps.py) or dagster-ray's `ray_executor`, a Ray job per step
(ray-jobs), and where accelerator steps are placed under each."""

from __future__ import annotations

import json
import os
from typing import Any

import dagster as dg

from calib_assets.scale_out import FORWARDED_ENV, RAY_ADDRESS_ENV, accelerator_resources, on_ray
from calib_assets.study import Study

EXECUTOR_MAX_CONCURRENT = 2
RAY_CONFIG_TAG = "dagster-ray/config"  # dagster_ray.configs.USER_DEFINED_RAY_KEY: {"num_gpus": 1}


def study_executor(executor: str) -> dg.ExecutorDefinition:
    if executor == "ray":
        from calib_assets.defs.ray_steps import warm_ray_executor

        return warm_ray_executor.configured({"num_cpus": 1.0})  # address: $RAY_ADDRESS in the run worker
    if executor == "ray-jobs":
        from dagster_ray import ray_executor

        return ray_executor.configured({"ray": {
            "address": os.environ.get(RAY_ADDRESS_ENV, "auto"), "num_cpus": 1, "env_vars": list(FORWARDED_ENV)}})
    # each step process loads its own model copy: cap how many run at once (pools cap GPU/DuckDB steps)
    return dg.multiprocess_executor.configured({"max_concurrent": EXECUTOR_MAX_CONCURRENT})


def accelerator_placement(study: Study, executor: str) -> dict[str, Any]:
    """Decorator arguments of a compression or evaluation asset. Locally the `gpu` pool lets one such step
    run at a time; on Ray each asks Ray for a GPU instead, and no pool throttles what Ray schedules."""
    if on_ray(executor):
        resources = accelerator_resources(study.compute.device)
        return {"op_tags": {RAY_CONFIG_TAG: json.dumps(resources)}} if resources else {}
    return {"pool": "gpu"}
