"""The warm worker pool on a real local Ray cluster (2 logical GPUs, 2 CPUs): reuse, isolation by spec,
room-making, refusal, cancellation and idle stop, each observed through the workers' own process ids."""

from __future__ import annotations

import os
import time

import pytest

from calib_assets import warm_workers
from calib_assets_tests.ray_cluster import local_ray_cluster

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray")]

GPU = {"CPU": 1, "GPU": 1}
PROBES = "calib_assets_tests.test_warm_workers"  # what a worker imports to call the probes below


@pytest.fixture(scope="module")
def pool():
    import ray

    os.environ[warm_workers.IDLE_SECONDS_ENV] = "4"
    try:
        with local_ray_cluster(num_gpus=2, num_cpus=2) as address:
            yield warm_workers.connect(address)
            ray.shutdown()
    finally:
        os.environ.pop(warm_workers.IDLE_SECONDS_ENV, None)


def _call(pool, call_id, spec, function=f"{PROBES}:_pid", payload=None):
    import ray

    return ray.get(pool.call.remote(call_id, spec, function, payload), timeout=120)


def _pid(_payload) -> int:
    return os.getpid()


def _pid_and_gpu(_payload) -> tuple[int, str]:
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_calls_of_one_spec_reuse_one_process_and_see_one_gpu(pool):
    spec = warm_workers.WorkerSpec.of({"CALIB_ASSETS_PROBE": "a"}, GPU, "code-a")
    seen = {_call(pool, f"reuse-{i}", spec, f"{PROBES}:_pid_and_gpu") for i in range(4)}
    assert len(seen) == 1  # one after another: the same warm process every time
    (pid, gpus), = seen
    assert pid != os.getpid() and gpus in {"0", "1"}
    assert _call(pool, "env", spec, "os:getenv", "CALIB_ASSETS_PROBE") == "a"


def test_concurrent_calls_get_one_worker_per_gpu_and_never_more(pool):
    import ray

    spec = warm_workers.WorkerSpec.of({"CALIB_ASSETS_PROBE": "b"}, GPU, "code-b")
    started = time.perf_counter()
    refs = [pool.call.remote(f"sleep-{i}", spec, f"{PROBES}:_sleep_then_pid", 1.5) for i in range(4)]
    results = ray.get(refs, timeout=120)
    elapsed = time.perf_counter() - started
    pids = {pid for pid, _, _ in results}
    assert len(pids) == 2, results  # two GPUs: two workers, each reused
    assert {gpu for _, gpu, _ in results} == {"0", "1"}
    spans = sorted((start, end) for _, _, (start, end) in results)
    at_once = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)  # running at each start
    assert at_once == 2 and elapsed >= 2 * 1.5  # four 1.5 s calls, two at a time


def _sleep_then_pid(seconds: float):
    start = time.time()
    time.sleep(seconds)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", ""), (start, time.time())


def test_a_changed_fingerprint_or_environment_gets_a_new_process(pool):
    first = _call(pool, "fp-1", warm_workers.WorkerSpec.of({"CALIB_ASSETS_PROBE": "c"}, GPU, "code-c"))
    assert _call(pool, "fp-2", warm_workers.WorkerSpec.of({"CALIB_ASSETS_PROBE": "c"}, GPU, "code-c2")) != first
    assert _call(pool, "fp-3", warm_workers.WorkerSpec.of({"CALIB_ASSETS_PROBE": "c2"}, GPU, "code-c")) != first


def test_idle_workers_of_another_spec_make_room(pool):
    """Two GPU workers hold both CPUs; a CPU-only call stops an idle one instead of waiting forever."""
    import ray

    gpu_spec = warm_workers.WorkerSpec.of({"CALIB_ASSETS_PROBE": "d"}, GPU, "code-d")
    ray.get([pool.call.remote(f"fill-{i}", gpu_spec, f"{PROBES}:_sleep_then_pid", 0.5) for i in range(2)])
    cpu_spec = warm_workers.WorkerSpec.of({"CALIB_ASSETS_PROBE": "d"}, {"CPU": 1}, "code-d")
    assert _call(pool, "cpu", cpu_spec, "os:getenv", "CALIB_ASSETS_PROBE") == "d"
    held = [worker["resources"] for worker in ray.get(pool.workers.remote())]
    assert sum(resources.get("CPU", 0) for resources in held) <= 2


def test_a_spec_the_cluster_can_never_hold_is_refused(pool):
    with pytest.raises(Exception, match=r"can never start: it needs 3 GPU \(the cluster has 2\)"):
        _call(pool, "too-big", warm_workers.WorkerSpec.of({}, {"GPU": 3}, "code-e"))


def test_a_cancelled_call_fails_with_worker_died_and_the_next_call_gets_a_fresh_process(pool):
    import ray

    spec = warm_workers.WorkerSpec.of({"CALIB_ASSETS_PROBE": "f"}, GPU, "code-f")
    before = _call(pool, "f-0", spec)
    ref = pool.call.remote("f-long", spec, "time:sleep", 60)
    deadline = time.time() + 30
    while not ray.get(pool.cancel.remote("f-long")):
        assert time.time() < deadline, "the long call never started"
        time.sleep(0.1)
    with pytest.raises(Exception, match="running call f-long died") as died:
        ray.get(ref, timeout=60)
    assert isinstance(died.value.cause, warm_workers.WorkerDied)  # type: ignore[attr-defined]
    assert ray.get(pool.cancel.remote("no-such-call")) is False
    assert _call(pool, "f-1", spec) not in {before}


def test_idle_workers_stop_after_the_idle_time(pool):
    import ray

    spec = warm_workers.WorkerSpec.of({"CALIB_ASSETS_PROBE": "g"}, GPU, "code-g")
    _call(pool, "g-0", spec)
    deadline = time.time() + 30
    while any(worker["code"] == "code-g" for worker in ray.get(pool.workers.remote())):
        assert time.time() < deadline, "an idle worker outlived its idle time (4 s) by far"
        time.sleep(0.5)


def test_fingerprint_changes_with_a_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg" / "m.py"
    module.write_text("x = 1\n")
    study = tmp_path / "study.yaml"
    study.write_text("name: s\n")
    before = warm_workers.fingerprint([tmp_path / "pkg", study])
    assert warm_workers.fingerprint([tmp_path / "pkg", study]) == before
    module.write_text("x = 22\n")
    changed = warm_workers.fingerprint([tmp_path / "pkg", study])
    (tmp_path / "pkg" / "n.py").write_text("")
    added = warm_workers.fingerprint([tmp_path / "pkg", study])
    assert len({before, changed, added}) == 3


def test_idle_seconds_is_validated(monkeypatch):
    monkeypatch.setenv(warm_workers.IDLE_SECONDS_ENV, "soon")
    with pytest.raises(ValueError, match="CALIB_ASSETS_WARM_IDLE_S='soon'"):
        warm_workers.idle_seconds()
    monkeypatch.setenv(warm_workers.IDLE_SECONDS_ENV, "0")
    with pytest.raises(ValueError, match="seconds > 0"):
        warm_workers.idle_seconds()
