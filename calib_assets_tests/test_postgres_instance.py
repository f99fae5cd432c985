"""The ci study through the real CLI on a Dagster instance in PostgreSQL (deploy/cluster/dagster.yaml, the
multi-machine settings), checked against what the Postgres database and the artifacts on disk hold: the
runs, a materialization of every asset partition, each checkpoint's data version = its manifest's
fingerprint; a second run reuses everything; `lineage` works in that environment.

A throwaway server (calib_assets_tests/postgres_server.py) needs Debian's postgresql package; without it the
tests are skipped (`.ci/run` installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from calib_assets import steps
from calib_assets_tests.postgres_server import PostgresUnavailable, postgres_server

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("postgres")]
REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "deploy" / "cluster" / "dagster.yaml"
CALIB_ASSETS = Path(sys.executable).with_name("calib-assets")
PROGRESS = re.compile(r"^\[\s*\d+/(\d+)\] (\S+)\s+(.+?)\s+(reused|done) in ")


def _materializations(server) -> list[dg.EventLogEntry]:
    """Every ASSET_MATERIALIZATION row of the Postgres event log, read with psycopg2 (not through Dagster's
    storage classes) and deserialized."""
    from dagster._serdes import deserialize_value

    connection = server.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("select event from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'")
            return [deserialize_value(row[0], dg.EventLogEntry) for row in cursor.fetchall()]
    finally:
        connection.close()


def _runs_in_postgres(server) -> list[tuple[str, str]]:
    connection = server.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("select run_id, status from runs")
            return cursor.fetchall()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """The ci study run twice through `calib-assets run` on a Postgres-backed instance: a namespace with the
    server, home, root, the two runs' output and the Postgres runs table after each."""
    try:
        server_context = postgres_server()
        server = server_context.__enter__()
    except PostgresUnavailable as error:
        pytest.skip(str(error))
    try:
        base = tmp_path_factory.mktemp("postgres-study")
        home, root = base / "dagster_home", base / "artifacts"
        home.mkdir()
        shutil.copy(CLUSTER_YAML, home / "dagster.yaml")
        env = {**os.environ, **server.env(), "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        for name in ("CALIB_ASSETS_ROOT", "CALIB_ASSETS_STUDY"):
            env.pop(name, None)

        def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
            return subprocess.run([str(CALIB_ASSETS), "--study", "ci", "--root", str(root), *args], env=env,
                                  cwd=REPO, capture_output=True, text=True, timeout=timeout)

        first = cli("run")
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        runs_after_first = _runs_in_postgres(server)
        second = cli("run")
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
        runs_after_second = _runs_in_postgres(server)
        with pytest.MonkeyPatch.context() as patch:  # for the instance and definitions this process opens
            for name, value in {**server.env(), "DAGSTER_HOME": str(home)}.items():
                patch.setenv(name, value)
            yield dict(server=server, home=home, root=root, cli=cli, first=first, second=second,
                       runs_after_first=runs_after_first, runs_after_second=runs_after_second)
    finally:
        server_context.__exit__(None, None, None)


def _progress(output: str) -> list[tuple[int, str, str, str]]:
    """(total, job, partition, 'reused' or 'done') per progress line of `calib-assets run`."""
    return [(int(m[1]), m[2], m[3], m[4]) for m in map(PROGRESS.match, output.splitlines()) if m]


def _reported_total(output: str) -> int:
    match = re.search(r"study 'ci': (\d+) runs in \d+ stages", output)
    assert match, output[:2000]
    return int(match[1])


def test_the_instance_is_postgres_and_holds_every_run(cluster_run):
    from dagster_postgres.event_log import PostgresEventLogStorage
    from dagster_postgres.run_storage import PostgresRunStorage

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage) is PostgresRunStorage
        assert type(instance.event_log_storage) is PostgresEventLogStorage
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1  # the copied blocks
        assert instance.run_monitoring_enabled
        dagster_runs = instance.get_runs_count()
    total = _reported_total(cluster_run["first"].stdout)
    lines = _progress(cluster_run["first"].stdout)
    assert total > 0 and len(lines) == total and {line[0] for line in lines} == {total}
    first, second = cluster_run["runs_after_first"], cluster_run["runs_after_second"]
    assert len(first) == total
    assert len(second) == 2 * total == dagster_runs  # the second run adds its own runs
    assert {status for _, status in second} == {"SUCCESS"}
    assert not (cluster_run["home"] / "history").exists()  # no SQLite run storage beside it


def test_every_asset_partition_has_a_materialization_in_postgres(cluster_run):
    from calib_assets.defs import build_definitions
    from calib_assets.study import load_study

    graph = build_definitions(load_study("ci"), root=str(cluster_run["root"])).resolve_asset_graph()
    expected = set()
    for key in graph.materializable_asset_keys:
        partitions_def = graph.get(key).partitions_def
        expected |= ({(key, partition) for partition in partitions_def.get_partition_keys()}
                     if partitions_def else {(key, None)})
    seen = defaultdict(int)
    for entry in _materializations(cluster_run["server"]):
        materialization = entry.asset_materialization
        seen[(materialization.asset_key, materialization.partition)] += 1
    assert len(expected) > 50
    assert expected - set(seen) == set()
    assert set(seen) - expected == set()
    # each run materialized each of its partitions once, the second run too
    assert {count for count in seen.values()} == {2}


def test_checkpoint_data_versions_are_the_fingerprints_on_disk(cluster_run):
    from calib_assets.study import load_study

    study, root = load_study("ci"), cluster_run["root"]
    versions = defaultdict(set)
    for entry in _materializations(cluster_run["server"]):
        materialization = entry.asset_materialization
        if materialization.asset_key.path[-1] in ("compressed_model", "baseline_model"):
            versions[(materialization.asset_key.path[-1], materialization.partition)].add(
                materialization.tags.get(DATA_VERSION_TAG))
    checked = 0
    for variant in study.variant_keys:
        for calib in study.calib_keys:
            key = dg.MultiPartitionKey({"variant": variant, "calib": calib})
            manifest = json.loads((steps.checkpoint_dir(root, variant, calib) / steps.MANIFEST).read_text())
            assert versions[("compressed_model", str(key))] == {manifest["fingerprint"]}, (variant, calib)
            checked += 1
    for baseline in study.baseline_keys:
        folder = steps.checkpoint_dir(root, baseline)
        if (folder / steps.MANIFEST).is_file():  # the dense baseline is the base model itself: no checkpoint
            manifest = json.loads((folder / steps.MANIFEST).read_text())
            assert versions[("baseline_model", baseline)] == {manifest["fingerprint"]}, baseline
            checked += 1
    calibration_free = len(study.baseline_keys) - len(study.models)  # all but each model's dense baseline
    assert checked == len(study.variant_keys) * len(study.calib_keys) + calibration_free


def test_a_second_run_reuses_every_artifact(cluster_run):
    first, second = _progress(cluster_run["first"].stdout), _progress(cluster_run["second"].stdout)
    assert [line[:3] for line in second] == [line[:3] for line in first]
    assert "done" in {line[3] for line in first}
    # every artifact is reused; the findings stage (eval_results, the dbt marts, the report) is rebuilt from the
    # warehouse and reports `reused` since its data versions did not change
    assert [line[1:] for line in second if line[3] != "reused"] == []
    # and what was rebuilt is what the first run wrote: one data version per asset partition across both
    # runs (the report's own hash covers its HTML and PNGs, which are not byte-stable: left out)
    versions = defaultdict(set)
    for entry in _materializations(cluster_run["server"]):
        materialization = entry.asset_materialization
        versions[(materialization.asset_key.to_user_string(), materialization.partition)].add(
            materialization.tags.get(DATA_VERSION_TAG))
    changed = sorted({key for key, seen in versions.items() if len(seen) != 1}, key=str)
    assert changed in ([], [("findings_report", None)])


def test_lineage_of_a_checkpoint_against_the_postgres_instance(cluster_run):
    from calib_assets.study import load_study

    study = load_study("ci")
    variant, calib = study.variant_keys[0], study.calib_keys[1]
    text = cluster_run["cli"]("lineage", f"{variant}|{calib}", timeout=300)
    assert text.returncode == 0, text.stdout + text.stderr
    assert f"-> calibration_set [{calib}|{study.models[0].name}]" in text.stdout
    as_json = cluster_run["cli"]("lineage", f"{variant}|{calib}", "--json", timeout=300)
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    chain = {node["asset"]: node for node in json.loads(as_json.stdout)}
    assert calib in chain["calibration_set"]["partition"]
    assert all(node["materialized"] and not node["problems"] for node in chain.values())
    # the checkpoint the lineage names is the one whose data version the Postgres event log holds
    key = str(dg.MultiPartitionKey({"variant": variant, "calib": calib}))
    versions = {entry.asset_materialization.tags.get(DATA_VERSION_TAG)
                for entry in _materializations(cluster_run["server"])
                if entry.asset_materialization.asset_key == dg.AssetKey("compressed_model")
                and entry.asset_materialization.partition == key}
    assert versions == {chain["compressed_model"]["fingerprint"]}

