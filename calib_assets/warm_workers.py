"""Warm worker processes on a Ray cluster: long-lived actors that run one call at a time and keep what they
imported between calls, so that a step pays a process start and the imports once per worker, not once per
step (a fresh process importing the code location costs ~5 s; docs/scale-out.md).

A worker is defined by its `WorkerSpec`: the environment it starts with, the Ray resources it holds for its
life (one GPU for an accelerator step) and a fingerprint of the code and study it loads; a call only ever
goes to a worker of an equal spec, so a changed study file or source tree gets new workers, never a stale
import. One detached pool actor per cluster leases workers to callers from any process (each Dagster run
worker is a driver of its own): it starts a worker while the cluster has room for one, stops idle workers
of another spec when it has none, and stops any worker idle for `idle_seconds`. A worker that dies mid-call
fails that call with `WorkerDied`; the pool starts a fresh one for the next.

Plain Ray, no Dagster: calib_assets/defs/ray_steps.py runs Dagster steps on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAMESPACE = "calib_assets"
IDLE_SECONDS_ENV = "CALIB_ASSETS_WARM_IDLE_S"
DEFAULT_IDLE_SECONDS = 600.0
POLL_SECONDS = 0.2


class WorkerDied(RuntimeError):
    """The worker process running a call ended before the call returned (killed, out of memory, node lost)."""


@dataclass(frozen=True)
class WorkerSpec:
    env: tuple[tuple[str, str], ...]
    resources: tuple[tuple[str, float], ...]  # Ray resource name ('CPU', 'GPU', custom) -> amount held
    code: str

    @classmethod
    def of(cls, env: Mapping[str, str], resources: Mapping[str, float], code: str) -> WorkerSpec:
        return cls(tuple(sorted(env.items())), tuple(sorted((k, float(v)) for k, v in resources.items() if v)), code)

    def describe(self) -> str:
        held = ", ".join(f"{amount:g} {name}" for name, amount in self.resources) or "no resources"
        return f"worker holding {held} (code {self.code[:10]})"


def fingerprint(paths: Iterable[Path]) -> str:
    """What a worker has loaded: every file under `paths` (directories walked) by name, size and modification
    time; a changed, added or removed file changes it."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _pool_name() -> str:
    """One pool per version of this module, so that a changed pool never serves an older caller."""
    return "warm-pool-" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


class Worker:
    """A warm process: calls `module:function(payload)` and returns its result."""

    def pid(self) -> int:
        return os.getpid()

    def call(self, function: str, payload: Any) -> Any:
        module, name = function.split(":")
        return getattr(importlib.import_module(module), name)(payload)


@dataclass
class _Slot:
    spec: WorkerSpec
    handle: Any
    busy: bool = True
    idle_since: float = field(default_factory=time.monotonic)


class Pool:
    """The detached actor that leases workers (async: a caller waiting for room never blocks the others)."""

    def __init__(self, idle_seconds: float):
        self.idle_seconds = idle_seconds
        self.slots: dict[int, _Slot] = {}
        self.calls: dict[str, int] = {}
        self.next_id = 0
        self.reaper: asyncio.Task | None = None

    async def call(self, call_id: str, spec: WorkerSpec, function: str, payload: Any) -> Any:
        import ray

        self.reaper = self.reaper or asyncio.get_running_loop().create_task(self._reap())
        slot_id = await self._lease(spec)
        self.calls[call_id] = slot_id
        slot = self.slots[slot_id]
        try:
            return await slot.handle.call.remote(function, payload)
        except ray.exceptions.RayActorError as error:
            self._stop(slot_id)
            raise WorkerDied(f"the {spec.describe()} running call {call_id} died: {_first_line(error)}") from None
        finally:
            self.calls.pop(call_id, None)
            slot.busy, slot.idle_since = False, time.monotonic()

    async def cancel(self, call_id: str) -> bool:
        """Stop the worker running `call_id` (the call then fails with WorkerDied); False if none runs it."""
        if call_id not in self.calls:
            return False
        self._stop(self.calls[call_id])
        return True

    async def workers(self) -> list[dict]:
        """Each live worker's spec fingerprint, resources and whether it is busy (what the tests inspect)."""
        return [{"id": i, "code": s.spec.code, "resources": dict(s.spec.resources), "busy": s.busy}
                for i, s in self.slots.items()]

    async def _lease(self, spec: WorkerSpec) -> int:
        self._refuse_impossible(spec)
        while True:
            idle = [i for i, s in self.slots.items() if s.spec == spec and not s.busy]
            if idle:
                self.slots[idle[0]].busy = True
                return idle[0]
            if self._fits(spec):
                return await self._start(spec)
            others = sorted((s.idle_since, i) for i, s in self.slots.items() if not s.busy)
            if others:  # an idle worker of another spec holds what this one needs
                self._stop(others[0][1])
                await asyncio.sleep(POLL_SECONDS)  # Ray's view of free resources lags the stop
                continue
            await asyncio.sleep(POLL_SECONDS)

    async def _start(self, spec: WorkerSpec) -> int:
        import ray

        slot_id, self.next_id = self.next_id, self.next_id + 1
        amounts = dict(spec.resources)
        options = {"num_cpus": amounts.pop("CPU", 0), "num_gpus": amounts.pop("GPU", 0), "resources": amounts,
                   "runtime_env": {"env_vars": dict(spec.env)}, "max_restarts": 0, "max_concurrency": 1}
        handle: Any = ray.remote(Worker).options(**options).remote()  # type: ignore[call-overload]
        self.slots[slot_id] = _Slot(spec, handle)
        try:
            await handle.pid.remote()
        except ray.exceptions.RayError as error:
            self._stop(slot_id)
            raise WorkerDied(f"the {spec.describe()} could not start: {_first_line(error)}") from None
        return slot_id

    def _stop(self, slot_id: int) -> None:
        import ray

        slot = self.slots.pop(slot_id, None)
        if slot is not None:
            ray.kill(slot.handle, no_restart=True)

    def _held(self) -> dict[str, float]:
        held: dict[str, float] = {}
        for slot in self.slots.values():
            for name, amount in slot.spec.resources:
                held[name] = held.get(name, 0.0) + amount
        return held

    def _fits(self, spec: WorkerSpec) -> bool:
        """Whether the cluster has room for one more such worker beside ours and what others hold. Ray's free
        view lags our starts and stops, so others' use is estimated from it and ours counted exactly."""
        import ray

        total, free, held = ray.cluster_resources(), ray.available_resources(), self._held()
        for name, amount in spec.resources:
            others = max(0.0, total.get(name, 0.0) - free.get(name, 0.0) - held.get(name, 0.0))
            if total.get(name, 0.0) - others - held.get(name, 0.0) < amount - 1e-9:
                return False
        return True

    def _refuse_impossible(self, spec: WorkerSpec) -> None:
        import ray

        total = ray.cluster_resources()
        short = [f"{amount:g} {name} (the cluster has {total.get(name, 0):g})" for name, amount in spec.resources
                 if total.get(name, 0.0) < amount]
        if short:
            raise ValueError(f"a {spec.describe()} can never start: it needs {', '.join(short)}")

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.idle_seconds))
            now = time.monotonic()
            for slot_id, slot in list(self.slots.items()):
                if not slot.busy and now - slot.idle_since > self.idle_seconds:
                    self._stop(slot_id)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def idle_seconds() -> float:
    raw = os.environ.get(IDLE_SECONDS_ENV, str(DEFAULT_IDLE_SECONDS))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"{IDLE_SECONDS_ENV}={raw!r}: a worker's idle time before it stops must be seconds > 0")
    return seconds


def connect(address: str) -> Any:
    """This process's handle on the cluster's pool (started on first use, detached: it outlives the caller)."""
    import ray

    if not ray.is_initialized():
        # ray types logging_level as int, yet its own default is a level name (ray_constants.LOGGER_LEVEL)
        ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR",  # type: ignore[arg-type]
                 log_to_driver=False, include_dashboard=False)
    pool = ray.remote(Pool).options(  # type: ignore[call-overload]
        name=_pool_name(), namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
        max_concurrency=1000)
    return pool.remote(idle_seconds())
