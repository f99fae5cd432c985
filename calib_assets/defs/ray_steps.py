"""Dagster steps on warm Ray workers (calib_assets.warm_workers): the step-delegating executor of
`CALIB_ASSETS_EXECUTOR=ray`. Each step is a call on a worker leased for it, running the body of
`dagster api execute_step` in that worker's process; its events go to the instance as from any step
process. An accelerator step's worker holds one GPU (Ray sets its CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.executor.step_delegating import (
    CheckStepHealthResult,
    StepDelegatingExecutor,
    StepHandler,
    StepHandlerContext,
)

from calib_assets import warm_workers
from calib_assets.defs.executors import RAY_CONFIG_TAG
from calib_assets.scale_out import FORWARDED_ENV, RAY_ADDRESS_ENV
from calib_assets.study import DEFAULT_STUDY, STUDY_ENV, study_path

STEP_FUNCTION = "calib_assets.defs.ray_steps:execute_step"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
DBT_DIR = PACKAGE_DIR.parent / "dbt"


def execute_step(payload: str) -> None:
    """In a warm worker: one step, as `dagster api execute_step` would run it in a process of its own."""
    from dagster._cli.api import _execute_step_command_body
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import deserialize_value

    args = deserialize_value(payload, ExecuteStepArgs)
    with dg.DagsterInstance.from_ref(args.instance_ref) as instance:  # type: ignore[arg-type]
        run = instance.get_run_by_id(args.run_id)
        if run is None:
            raise ValueError(f"run {args.run_id} of step {args.step_keys_to_execute} is not in the instance")
        for _ in _execute_step_command_body(args, instance, run):
            pass


def loaded_code() -> list[Path]:
    """What a worker imports: the library, the dbt project it parses, and the study file of this process."""
    study = study_path(os.environ.get(STUDY_ENV, DEFAULT_STUDY))
    return [PACKAGE_DIR, DBT_DIR / "models", DBT_DIR / "macros", DBT_DIR / "dbt_project.yml", study]


def step_resources(tags: dict[str, Any], num_cpus: float) -> dict[str, float]:
    """Ray resources of a step's worker: `num_cpus` CPUs, plus what its `dagster-ray/config` tag asks."""
    config = tags.get(RAY_CONFIG_TAG) or {}
    asked = json.loads(config) if isinstance(config, str) else dict(config)
    unknown = set(asked) - {"num_cpus", "num_gpus", "resources"}
    if unknown:
        raise ValueError(f"{RAY_CONFIG_TAG} tag {asked!r}: unknown keys {sorted(unknown)}; "
                         "allowed: num_cpus, num_gpus, resources")
    return {"CPU": float(asked.get("num_cpus", num_cpus)), "GPU": float(asked.get("num_gpus", 0)),
            **{name: float(amount) for name, amount in (asked.get("resources") or {}).items()}}


class WarmStepHandler(StepHandler):
    def __init__(self, address: str, num_cpus: float):
        super().__init__()
        self.address, self.num_cpus = address, num_cpus
        self.calls: dict[str, Any] = {}  # call id -> the pool call's ObjectRef
        self._pool: Any = None

    @property
    def name(self) -> str:
        return "WarmRayStepHandler"

    def pool(self) -> Any:
        if self._pool is None:
            self._pool = warm_workers.connect(self.address)
        return self._pool

    def launch_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        from dagster._serdes import serialize_value

        step_key, call_id = _call_of(step_handler_context)
        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        resources = step_resources(dict(step_handler_context.step_tags[step_key]), self.num_cpus)
        spec = warm_workers.WorkerSpec.of(env, resources, warm_workers.fingerprint(loaded_code()))
        yield DagsterEvent.step_worker_starting(
            step_handler_context.get_step_context(step_key),
            message=f'Executing step "{step_key}" on a warm Ray {spec.describe()}.',
            metadata={"Warm worker call": dg.MetadataValue.text(call_id)})
        payload = serialize_value(step_handler_context.execute_step_args)
        self.calls[call_id] = self.pool().call.remote(call_id, spec, STEP_FUNCTION, payload)

    def check_step_health(self, step_handler_context: StepHandlerContext) -> CheckStepHealthResult:
        import ray

        step_key, call_id = _call_of(step_handler_context)
        call = self.calls.get(call_id)
        if call is None:
            return CheckStepHealthResult.unhealthy(f"{step_key} was not started on a Ray worker by this run worker")
        done, _ = ray.wait([call], timeout=0)
        if done:
            try:
                ray.get(call)
            except ray.exceptions.RayError as error:
                cause = getattr(error, "cause", None) or error
                return CheckStepHealthResult.unhealthy(f"{step_key} failed on its Ray worker: {cause}")
        return CheckStepHealthResult.healthy()

    def terminate_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        import ray

        step_key, call_id = _call_of(step_handler_context)
        yield DagsterEvent.engine_event(step_handler_context.get_step_context(step_key),
                                        message=f"Stopping the Ray worker of step {step_key}",
                                        event_specific_data=EngineEventData())
        ray.get(self.pool().cancel.remote(call_id))


def _call_of(context: StepHandlerContext) -> tuple[str, str]:
    """The step's key and its call id: run, step and attempt (a retry is a new call)."""
    keys = context.execute_step_args.step_keys_to_execute or []
    if len(keys) != 1:
        raise ValueError(f"a Ray worker runs one step at a time, asked for {list(keys)}")
    known = context.execute_step_args.known_state
    attempt = known.get_retry_state().get_attempt_count(keys[0]) if known else 0
    return keys[0], f"{context.execute_step_args.run_id}:{keys[0]}:{attempt}"


@dg.executor(name="ray_warm_workers", requirements=multiple_process_executor_requirements(),
             config_schema={"address": dg.Field(str, is_required=False), "num_cpus": dg.Field(float, default_value=1.0),
                            "retries": get_retries_config()})
def warm_ray_executor(init_context) -> StepDelegatingExecutor:
    """Steps as calls on warm Ray workers of the cluster at `address` (default: $RAY_ADDRESS, else auto)."""
    config = init_context.executor_config
    address = config.get("address") or os.environ.get(RAY_ADDRESS_ENV, "auto")
    return StepDelegatingExecutor(WarmStepHandler(address, config["num_cpus"]),
                                  retries=RetryMode.from_config(config["retries"]),  # type: ignore[arg-type]
                                  should_verify_step=True)
