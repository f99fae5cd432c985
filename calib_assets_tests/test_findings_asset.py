"""The findings_report asset: materialized over a synthetic warehouse, and wired into the study's graph."""

from __future__ import annotations

import base64
import re

import dagster as dg
import pytest

from calib_assets.defs.findings import build_findings_assets, report_marts
from calib_assets.defs.resources import ArtifactStore
from calib_assets.findings.figures import FIGURES
from calib_assets_tests.findings_fixtures import built_warehouse

pytestmark = pytest.mark.xdist_group("dbt_marts")


def test_report_asset_writes_the_report_and_attaches_every_figure():
    path, _, completed = built_warehouse("grid")
    assert completed.returncode == 0
    (findings_report,) = build_findings_assets()
    with dg.instance_for_test() as instance:
        result = dg.materialize([findings_report], instance=instance,
                                resources={"store": ArtifactStore(root=str(path.parent), study="grid")})
        assert result.success
        (event,) = result.get_asset_materialization_events()
        materialization = event.materialization
    metadata = materialization.metadata
    report = path.parent / "report" / "index.html"
    assert metadata["report"].value == str(report) and report.is_file()
    for stem in FIGURES:
        markdown = metadata[f"figure/{stem}"].value
        png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown).group(1))
        assert png == (report.parent / f"{stem}.png").read_bytes() and png[:4] == b"\x89PNG"
    assert "task_average acc" in metadata["headline"].value
    assert materialization.tags["dagster/data_version"] == metadata["fingerprint"].value


def test_report_follows_the_marts_in_the_study_graph():
    from calib_assets.defs import build_definitions
    from calib_assets.study import load_study

    defs = build_definitions(load_study("ci"), root="/nonexistent")
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey("findings_report")
    node = graph.get(key)
    assert {dep.to_user_string() for dep in node.parent_keys} == set(report_marts())
    assert all(graph.has(parent) for parent in node.parent_keys)  # every mart it reads is a dbt model
    assert node.group_name == "findings" and node.automation_condition is not None
    findings_job = defs.resolve_job_def("findings")
    assert key in findings_job.asset_layer.executable_asset_keys
