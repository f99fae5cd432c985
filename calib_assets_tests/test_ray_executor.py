"""The study's compression and evaluation on a real local Ray cluster (logical GPUs), through Dagster's run
queue and the warm-worker executor (calib_assets/defs/ray_steps.py), against the same partitions run in process.

One module-scoped fixture runs, on a reduced `ci` study (3 calibration-based methods x 2 calibration sets,
compute.device auto so that each accelerator step asks Ray for a GPU): the whole study in process (root A),
the upstream stages in process (root B), `calib-assets run --ray ADDRESS --jobs compress_and_evaluate` on a
2-GPU, 2-CPU cluster (root B), then the findings in process (root B).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from calib_assets_tests.ray_cluster import local_ray_cluster

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray")]

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("calib-assets")
METHODS = ["gptq", "wanda", "sparsegpt"]
UPSTREAM = "prepare_models,prepare_corpora,tokenize_pools,build_calibration_sets,build_tasks,baselines"
ACCELERATOR_STEPS = ("compressed_model", "evaluation")
TIMING_KEYS = {"compress_seconds", "seconds"}  # wall-clock fields of a manifest: the only expected difference


def _study_file(directory: Path) -> Path:
    study = yaml.safe_load((REPO / "studies" / "ci.yaml").read_text())
    study["methods"] = [method for method in study["methods"] if method["method"] in METHODS]
    study["compute"]["device"] = "auto"
    path = directory / "ci.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _cli(study: Path, root: Path, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CALIB_ASSETS_EXECUTOR", None)
    done = subprocess.run([str(CLI), "--study", str(study), "--root", str(root), "run", *args], env=env,
                          capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ray_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray")
    study = _study_file(base)
    _cli(study, base / "in-process", base / "home-a")
    root, home = base / "on-ray", base / "home-b"
    _cli(study, root, home, "--jobs", UPSTREAM)
    with local_ray_cluster(num_gpus=2, num_cpus=2) as address:
        started = time.time()
        on_ray = _cli(study, root, home, "--ray", address, "--jobs", "compress_and_evaluate")
        ray_seconds = time.time() - started
        _cli(study, root, home, "--jobs", "findings")
        yield {"study": study, "reference": base / "in-process", "root": root, "home": home, "address": address,
               "stdout": on_ray.stdout, "seconds": ray_seconds}


def _instance(home: Path):
    import dagster as dg

    return dg.DagsterInstance.from_config(str(home))


def _partitions(study_file: Path) -> list[tuple[str, str]]:
    from calib_assets.study import load_study

    study = load_study(str(study_file))
    return [(variant, calib) for variant in study.variant_keys for calib in study.calib_keys]


def _step_records(instance, run_ids):
    """Per accelerator step: (start, end) timestamps from the event log and its materialization's metadata."""
    from dagster import DagsterEventType

    steps = []
    for run_id in run_ids:
        events = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is not None and event.step_key in ACCELERATOR_STEPS:
                events.setdefault((event.event_type, event.step_key), (entry.timestamp, event))
        for step in ACCELERATOR_STEPS:
            start = events[(DagsterEventType.STEP_START, step)][0]
            end = events[(DagsterEventType.STEP_SUCCESS, step)][0]
            materialization = events[(DagsterEventType.ASSET_MATERIALIZATION, step)][1]
            worker = events[(DagsterEventType.STEP_WORKER_STARTING, step)][1]
            started = events[(DagsterEventType.STEP_WORKER_STARTED, step)][1]
            steps.append({"run": run_id, "step": step, "start": start, "end": end,
                          "metadata": materialization.event_specific_data.materialization.metadata,
                          "worker_metadata": worker.event_specific_data.metadata,
                          "pid": started.event_specific_data.metadata["pid"].value})
    return steps


def _most_at_once(intervals) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in edges:  # an end sorts before a start at the same instant
        running += change
        most = max(most, running)
    return most


def test_each_partition_is_a_queued_run_whose_steps_run_on_warm_workers_of_one_gpu(ray_runs):
    import dagster as dg

    instance = _instance(ray_runs["home"])
    runs = instance.get_runs(dg.RunsFilter(job_name="compress_and_evaluate", tags={"calib_assets/executor": "ray"}))
    partitions = _partitions(ray_runs["study"])
    assert len(partitions) >= 6
    assert sorted(run.tags["dagster/partition"] for run in runs) == sorted(f"{c}|{v}" for v, c in partitions)
    assert all(run.status == dg.DagsterRunStatus.SUCCESS and run.tags["calib_assets/study"] == "ci" for run in runs)
    steps = _step_records(instance, [run.run_id for run in runs])
    assert len(steps) == 2 * len(partitions)
    for step in steps:
        assert "Warm worker call" in step["worker_metadata"], step
        assert step["metadata"]["cuda_visible_devices"].value in {"0", "1"}, step  # exactly one of the two GPUs
        assert step["metadata"]["device"].value == "cpu"  # logical GPUs: torch sees no CUDA, auto picks the CPU
    intervals = [(step["start"], step["end"]) for step in steps]
    assert _most_at_once(intervals) == 2  # never more than the cluster's 2 GPUs, and at least two at once
    pids = {step["pid"] for step in steps}
    assert len(pids) == 2, pids  # one warm process per GPU served all the steps: none started per step
    assert all(pid != os.getpid() for pid in pids)
    assert f"{len(partitions)} runs in 1 stages on the Ray cluster at {ray_runs['address']}" in ray_runs["stdout"]


def _without_timing(value):
    if isinstance(value, dict):
        return {key: _without_timing(item) for key, item in value.items() if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timing(item) for item in value]
    return value


def test_artifacts_equal_the_in_process_run(ray_runs):
    from calib_assets import steps
    from calib_assets.artifacts import read_json

    for variant, calib in _partitions(ray_runs["study"]):
        on_ray, in_process = (steps.checkpoint_dir(root, variant, calib)
                              for root in (ray_runs["root"], ray_runs["reference"]))
        tensors = read_json(on_ray / "manifest.json")["tensors_file"]
        assert (on_ray / tensors).read_bytes() == (in_process / tensors).read_bytes(), (variant, calib)
        manifests = [read_json(directory / "manifest.json") for directory in (on_ray, in_process)]
        assert _without_timing(manifests[0]) == _without_timing(manifests[1]), (variant, calib)
        tables = [steps.read_evaluation(root, variant, calib).drop(columns=["run_id", "evaluated_at"])
                  for root in (ray_runs["root"], ray_runs["reference"])]
        pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
        fingerprints = [read_json(steps.evaluation_dir(root, variant, calib) / "manifest.json")["fingerprint"]
                        for root in (ray_runs["root"], ray_runs["reference"])]
        assert fingerprints[0] == fingerprints[1]


def test_eval_results_holds_every_row_once(ray_runs):
    """Every row once, and the same rows (values included) as the in-process run's warehouse."""
    from calib_assets import steps
    from calib_assets.warehouse import connect

    keys = ["variant", "calib", "eval_dataset", "metric"]
    tables = []
    for root in (ray_runs["root"], ray_runs["reference"]):
        with connect(steps.warehouse_path(root), read_only=True) as connection:
            table = connection.sql("select * from eval_results").df()
        assert not table.duplicated(keys).any()
        tables.append(table.drop(columns=["run_id", "evaluated_at"]).sort_values(keys).reset_index(drop=True))
    pairs = set(_partitions(ray_runs["study"]))
    assert pairs <= set(zip(tables[0]["variant"], tables[0]["calib"]))
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)


def _kill_when_step_starts(instance, known_runs: set[str], step_key: str, killed: dict, stop: threading.Event):
    """SIGKILL the warm worker process executing `step_key` of a new run (the pid its STEP_WORKER_STARTED
    event names) as soon as the step has started."""
    import dagster as dg
    import psutil

    while not stop.is_set():
        for run in instance.get_runs(dg.RunsFilter(job_name="compress_and_evaluate")):
            if run.run_id in known_runs or not any(
                    entry.dagster_event.step_key == step_key
                    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)):
                continue
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED):
                if entry.dagster_event.step_key == step_key:
                    pid = int(entry.dagster_event.event_specific_data.metadata["pid"].value)
                    psutil.Process(pid).kill()
                    killed["pids"] = [pid]
                    return
        time.sleep(0.05)


def test_a_ray_worker_killed_mid_step_fails_the_run_and_a_rerun_completes_it(ray_runs, monkeypatch):
    """The checkpoint of one partition is set aside (the test's own copy), so that its step computes again;
    its warm worker process is killed once the step has started."""
    from calib_assets import steps
    from calib_assets.artifacts import stale_temporaries
    from calib_assets.queue_runner import run_study_on_ray
    from calib_assets.runner import StudyRunFailed
    from calib_assets.scale_out import Cluster, connect_cluster
    from calib_assets.study import load_study

    study, root = load_study(str(ray_runs["study"])), ray_runs["root"]
    variant, calib = _partitions(ray_runs["study"])[0]
    checkpoint = steps.checkpoint_dir(root, variant, calib)
    kept = checkpoint.with_name(checkpoint.name + ".kept-by-test")
    checkpoint.rename(kept)
    instance = _instance(ray_runs["home"])
    known_runs, killed, stop = {run.run_id for run in instance.get_runs()}, {}, threading.Event()
    killer = threading.Thread(target=_kill_when_step_starts,
                              args=(instance, known_runs, "compressed_model", killed, stop))
    killer.start()
    monkeypatch.setenv("CALIB_ASSETS_ROOT", str(root))
    monkeypatch.delenv("CALIB_ASSETS_STUDY", raising=False)
    with pytest.raises(ValueError, match=r"loads study 'default'.*not the study 'ci'"):
        run_study_on_ray(study, instance, Cluster(ray_runs["address"], gpus=2, cpus=2, nodes=1))
    monkeypatch.setenv("CALIB_ASSETS_STUDY", str(ray_runs["study"]))  # what the CLI sets for the code location
    cluster = connect_cluster(ray_runs["address"])
    only = {"compress_and_evaluate": [f"{calib}|{variant}"]}
    try:
        with pytest.raises(StudyRunFailed) as failure:
            run_study_on_ray(study, instance, cluster, echo=print, only=only)
    finally:
        stop.set()
        killer.join()
    assert killed.get("pids"), "the step's worker process was never found"
    message = str(failure.value)
    assert "compressed_model failed on its Ray worker" in message and "died" in message, message
    assert not checkpoint.exists()  # no half artifact under the partition's path
    run_study_on_ray(study, instance, cluster, echo=lambda line: None, only=only)
    tensors = read_manifest_tensors(checkpoint)
    assert (checkpoint / tensors).read_bytes() == (kept / tensors).read_bytes()
    from calib_assets.recovery import recover

    recover(instance, root)
    assert not [path for path in stale_temporaries(root) if checkpoint.name in path.name]


def read_manifest_tensors(directory: Path) -> str:
    from calib_assets.artifacts import read_json

    return read_json(directory / "manifest.json")["tensors_file"]
