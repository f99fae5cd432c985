"""The scale-out rules without a cluster: executor choice, where accelerator steps go under each executor,
stage selection, and the errors a user gets before any work (test_ray_executor.py runs a real cluster)."""

from __future__ import annotations

import json

import pytest

from calib_assets.cli import main
from calib_assets.defs import build_definitions
from calib_assets.runner import stage_plan
from calib_assets.scale_out import Cluster, ScaleOutError, check_cluster_fits, executor_choice, ray_executor_choice
from calib_assets.study import load_study

ACCELERATOR_ASSETS = {"compressed_model", "baseline_model", "evaluation", "baseline_eval"}


def _ops(defs):
    """asset name -> (pool, op tags) of the op that computes it."""
    found = {}
    for assets_def in defs.assets:
        for key in assets_def.keys:
            found[key.to_user_string()] = (assets_def.op.pool, dict(assets_def.op.tags))
    return found


def test_the_executor_comes_from_the_environment_and_an_unknown_one_is_refused(monkeypatch):
    monkeypatch.delenv("CALIB_ASSETS_EXECUTOR", raising=False)
    assert executor_choice() == "local"
    monkeypatch.setenv("CALIB_ASSETS_EXECUTOR", "ray")
    assert executor_choice() == "ray"
    assert ray_executor_choice() == "ray"
    monkeypatch.setenv("CALIB_ASSETS_EXECUTOR", "ray-jobs")
    assert executor_choice() == ray_executor_choice() == "ray-jobs"
    monkeypatch.setenv("CALIB_ASSETS_EXECUTOR", "local")
    assert ray_executor_choice() == "ray"  # `run --ray` runs on Ray whatever the local choice
    monkeypatch.setenv("CALIB_ASSETS_EXECUTOR", "slurm")
    with pytest.raises(ScaleOutError, match=r"'slurm'.*allowed: \['local', 'ray', 'ray-jobs'\]"):
        executor_choice()


@pytest.mark.parametrize("executor, name", [("ray", "ray_warm_workers"), ("ray-jobs", "ray")])
@pytest.mark.parametrize("device, gpus", [("auto", 1), ("cuda", 1), ("cpu", None)])
def test_on_ray_accelerator_steps_ask_for_a_gpu_unless_pinned_to_the_cpu_and_no_pool_throttles_them(
        tmp_path, device, gpus, executor, name):
    ci = load_study("ci")
    study = ci.model_copy(update={"compute": ci.compute.model_copy(update={"device": device})})
    defs = build_definitions(study, root=str(tmp_path), executor=executor)
    assert defs.executor.name == name
    for name, (pool, tags) in _ops(defs).items():
        resources = json.loads(tags.get("dagster-ray/config", "{}"))
        if name in ACCELERATOR_ASSETS:
            assert pool is None and resources.get("num_gpus") == gpus, name
        else:
            assert "num_gpus" not in resources, name
    assert {pool for pool, _ in _ops(defs).values()} == {None, "duckdb"}  # DuckDB writers stay serialized


def test_a_warm_worker_asks_ray_for_one_cpu_plus_what_its_step_tag_asks():
    from calib_assets.defs.ray_steps import step_resources

    assert step_resources({}, 1.0) == {"CPU": 1.0, "GPU": 0.0}
    assert step_resources({"dagster-ray/config": json.dumps({"num_gpus": 1})}, 1.0) == {"CPU": 1.0, "GPU": 1.0}
    assert step_resources({"dagster-ray/config": {"num_cpus": 4, "resources": {"node:a": 0.5}}}, 1.0) == {
        "CPU": 4.0, "GPU": 0.0, "node:a": 0.5}
    with pytest.raises(ValueError, match=r"unknown keys \['memory'\]; allowed: num_cpus, num_gpus, resources"):
        step_resources({"dagster-ray/config": {"memory": 10}}, 1.0)


def test_locally_accelerator_steps_share_the_gpu_pool_and_carry_no_ray_tags(tmp_path):
    defs = build_definitions(load_study("ci"), root=str(tmp_path), executor="local")
    assert defs.executor.name == "multiprocess"
    ops = _ops(defs)
    assert {name for name, (pool, _) in ops.items() if pool == "gpu"} == ACCELERATOR_ASSETS
    assert not [name for name, (_, tags) in ops.items() if "dagster-ray/config" in tags]


def test_a_cluster_without_gpus_is_refused_for_a_study_that_asks_for_them():
    cpu_only = Cluster(address="127.0.0.1:6379", gpus=0, cpus=8, nodes=1)
    with pytest.raises(ScaleOutError, match="has no GPU.*compute.device is 'auto'"):
        check_cluster_fits(cpu_only, "auto")
    check_cluster_fits(cpu_only, "cpu")
    assert cpu_only.run_slots("cpu") == 8 and Cluster("a", gpus=4, cpus=64, nodes=2).run_slots("auto") == 4


def test_stage_selection_keeps_the_study_order_and_names_what_it_does_not_know():
    study = load_study("ci")
    plan = stage_plan(study, {"findings": None, "compress_and_evaluate": None})
    assert [stage.job for stage in plan] == ["compress_and_evaluate", "findings"]
    assert len(plan[0].keys) == len(study.variant_keys) * len(study.calib_keys)
    with pytest.raises(ValueError, match=r"unknown job\(s\) \['compress'\].*prepare_models"):
        stage_plan(study, {"compress": None})
    with pytest.raises(ValueError, match="compress_and_evaluate has no partition 'nope'"):
        stage_plan(study, {"compress_and_evaluate": ["nope"]})


def test_the_cli_refuses_an_unknown_job_and_an_absent_cluster_before_any_work(tmp_path, capsys):
    root = tmp_path / "artifacts"
    assert main(["--study", "ci", "--root", str(root), "run", "--jobs", "compress,findings"]) == 2
    assert "unknown job(s) ['compress']" in capsys.readouterr().err
    assert main(["--study", "ci", "--root", str(root), "run", "--ray", "127.0.0.1:1"]) == 2
    assert "no Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err
    assert not (root / "checkpoints").exists()


_HOLD_WRITE = """
import sys, time
from pathlib import Path
from calib_assets.artifacts import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "half.txt").write_text("being written")
    print("writing", flush=True)
    time.sleep(600)
"""


def test_two_writers_of_one_partition_the_second_is_refused_and_a_killed_writer_leaves_nothing_behind(tmp_path):
    """Another process (as a worker on another node would be) writes a checkpoint; this one is refused while
    it lives, names it, and writes once it was killed; the lock and temporary it left are then stale."""
    import subprocess
    import sys

    from calib_assets.artifacts import ArtifactBeingWritten, atomic_dir, remove_stale_temporaries, stale_temporaries

    final = tmp_path / "checkpoints" / "m.gptq" / "bbc-tech.s0"
    writer = subprocess.Popen([sys.executable, "-c", _HOLD_WRITE, str(final)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        with pytest.raises(ArtifactBeingWritten, match=rf"{final}.*pid {writer.pid} on "):
            with atomic_dir(final):
                pytest.fail("a second writer was let in")
    finally:
        writer.kill()
        writer.wait()
    assert not final.exists()  # the killed write left the partition absent, not half written
    left = {path.name for path in stale_temporaries(tmp_path)}
    assert f".{final.name}.lock" in left and any(str(writer.pid) in name for name in left), left
    with atomic_dir(final) as tmp:  # a lock whose process ended is taken over
        (tmp / "whole.txt").write_text("written")
    assert (final / "whole.txt").read_text() == "written"
    assert not (final.parent / f".{final.name}.lock").exists()
    remove_stale_temporaries(tmp_path)
    assert sorted(path.name for path in final.parent.iterdir()) == [final.name]
