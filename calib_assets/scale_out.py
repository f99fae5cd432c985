"""Where a study's steps run: in this process (the default) or on a Ray cluster, one GPU per accelerator step.

The rules live here, in plain Python; the Dagster layer (calib_assets/defs/executors.py) applies them and
calib_assets/queue_runner.py launches a whole study through Dagster's run queue. See docs/scale-out.md.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

EXECUTOR_ENV = "CALIB_ASSETS_EXECUTOR"
EXECUTORS = ("local", "ray", "ray-jobs")  # ray: warm Ray workers; ray-jobs: a Ray job per step
RAY_ADDRESS_ENV = "RAY_ADDRESS"
PROBE_TIMEOUT_S = 5

# What a step started on a Ray worker needs from the process that launched its run: the study, the
# artifact root, the instance (Postgres settings included) and the offline switches. Unset names are skipped.
FORWARDED_ENV = (
    "CALIB_ASSETS_STUDY", "CALIB_ASSETS_ROOT", EXECUTOR_ENV, RAY_ADDRESS_ENV, "DAGSTER_HOME",
    "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB",
    "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM",
)


def ray_location_env(address: str, executor: str = "ray") -> dict[str, str]:
    """The environment of a code location whose runs execute on the Ray cluster at `address`. Steps started
    as Ray jobs run `<this environment's python> -m dagster`, not a `dagster` looked up on a worker's PATH."""
    return {EXECUTOR_ENV: executor, RAY_ADDRESS_ENV: address, "DAGSTER_USE_PYTHON_ENVIRONMENT_ENTRY_POINT": "1"}


def ray_executor_choice() -> str:
    """Which Ray executor `run --ray` uses: $CALIB_ASSETS_EXECUTOR when it names one (ray-jobs: dagster-ray's
    Ray job per step, kept to compare), else ray (warm workers)."""
    choice = executor_choice()
    return choice if on_ray(choice) else "ray"


def on_ray(executor: str) -> bool:
    return executor.startswith("ray")


class ScaleOutError(ValueError):
    pass


def executor_choice() -> str:
    """The executor named by $CALIB_ASSETS_EXECUTOR (default: local)."""
    choice = os.environ.get(EXECUTOR_ENV, "local") or "local"
    if choice not in EXECUTORS:
        raise ScaleOutError(f"{EXECUTOR_ENV}={choice!r} is not an executor; allowed: {list(EXECUTORS)}")
    return choice


def wants_gpu(device: str) -> bool:
    """Whether a study's accelerator steps ask Ray for a GPU: unless the study pins them to the CPU. On the
    worker, `auto` then resolves to the one GPU Ray made visible (CUDA_VISIBLE_DEVICES)."""
    return device != "cpu"


def accelerator_resources(device: str) -> dict[str, float]:
    """Ray resources of a compression or evaluation step. Every step asks for one CPU (the executor's
    default), so CPU steps never oversubscribe a node."""
    return {"num_gpus": 1} if wants_gpu(device) else {}


@dataclass(frozen=True)
class Cluster:
    address: str
    gpus: int
    cpus: int
    nodes: int

    def run_slots(self, device: str) -> int:
        """How many of a study's runs can make progress at once: one per GPU (each run holds at most one
        step, so one GPU, at a time), or one per CPU for a study pinned to CPUs."""
        return self.gpus if wants_gpu(device) else self.cpus


def connect_cluster(address: str) -> Cluster:
    """The Ray cluster at `address` ('auto' for the one started on this machine, or HOST:PORT of its head),
    or a ScaleOutError saying how to start one."""
    import ray

    _check_reachable(address)
    try:
        # ray types logging_level as int, yet its own default is a level name (ray_constants.LOGGER_LEVEL)
        ray.init(address=address, logging_level="ERROR",  # type: ignore[arg-type]
                 log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ScaleOutError(f"no Ray cluster at {address!r} ({type(error).__name__}: {str(error).splitlines()[0]}); "
                            "start one with `ray start --head --num-gpus=N` (docs/scale-out.md)") from None
    try:
        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    finally:
        ray.shutdown()
    return Cluster(address=address, gpus=int(resources.get("GPU", 0)), cpus=int(resources.get("CPU", 0)),
                   nodes=nodes)


def _check_reachable(address: str) -> None:
    """Fail in seconds where nothing listens at the head's address: ray.init would retry for minutes."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as error:
        resolved, reason = None, str(error).splitlines()[0]
    else:
        reason = "no cluster started on this machine" if resolved is None else ""
    host, _, port = (resolved or "").rpartition(":")
    if resolved and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
            return
        except OSError as error:
            reason = f"nothing answers at {resolved}: {error.strerror or error}"
    elif resolved:
        return  # another scheme (e.g. ray://): ray.init judges it
    raise ScaleOutError(f"no Ray cluster at {address!r} ({reason}); start one with `ray start --head --num-gpus=N` "
                        "(docs/scale-out.md)")


def check_cluster_fits(cluster: Cluster, device: str) -> None:
    """Refuse a study whose accelerator steps would wait forever for a GPU the cluster does not have."""
    if wants_gpu(device) and cluster.gpus == 0:
        raise ScaleOutError(
            f"the Ray cluster at {cluster.address!r} has no GPU, and the study's compute.device is {device!r}, so "
            "its compression and evaluation steps would ask Ray for a GPU and wait forever; start Ray with "
            "--num-gpus, or set compute.device: cpu in the study")
    if cluster.run_slots(device) == 0:
        raise ScaleOutError(f"the Ray cluster at {cluster.address!r} has no CPU to run steps on")
