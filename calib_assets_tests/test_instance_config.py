import shutil
from pathlib import Path

import dagster as dg

PROJECT = Path(__file__).resolve().parents[1]


def test_project_dagster_yaml_sets_pools_and_run_monitoring(tmp_path, monkeypatch):
    shutil.copy(PROJECT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1  # gpu and duckdb: one step at a time
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds > 0


def test_jobs_run_on_a_capped_multiprocess_executor(tmp_path):
    from calib_assets.defs import build_definitions
    from calib_assets.study import load_study

    defs = build_definitions(load_study("ci"), root=str(tmp_path))
    executor = defs.resolve_job_def("compress_and_evaluate").executor_def
    resolved = executor.apply_config_mapping({}).value["config"]
    assert executor.name == "multiprocess" and resolved["max_concurrent"] == 2


def test_the_cluster_instance_differs_from_the_local_one_only_in_its_storage():
    """deploy/cluster/dagster.yaml copies the local settings (pools, queue, monitoring): a change to one file
    alone would make a study behave differently on a cluster."""
    import yaml

    local = yaml.safe_load((PROJECT / "dagster.yaml").read_text())
    cluster = yaml.safe_load((PROJECT / "deploy" / "cluster" / "dagster.yaml").read_text())
    assert set(cluster.pop("storage")) == {"postgres"} and "storage" not in local
    assert cluster == local
