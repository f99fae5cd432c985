"""A failed dbt test costs only what it guards: the build records it with its rows, the report and the
printed findings name it and leave out the models dbt skipped (never showing them stale), the Dagster step
goes on to the report, and `calib-assets findings` exits non-zero."""

from __future__ import annotations

import os
import shutil

import dagster as dg
import pytest

from calib_assets.findings import findings_summary, write_report
from calib_assets.findings.build_status import build_status
from calib_assets_tests.findings_fixtures import built_warehouse, dbt_build, read_table

pytestmark = pytest.mark.xdist_group("dbt_marts")


def _copy_of_grid(tmp_path):
    path, results, completed = built_warehouse("grid")
    assert completed.returncode == 0
    copy = tmp_path / path.name  # compiled SQL names the database after the file
    shutil.copy(path, copy)
    return copy, results


def _execute(path, sql: str) -> None:
    import duckdb

    with duckdb.connect(str(path)) as connection:
        connection.execute(sql)


@pytest.fixture(scope="module")
def failed_mart_test(tmp_path_factory):
    """The grid warehouse with one mart's rows made inconsistent, then `dbt test` of that mart."""
    tmp_path = tmp_path_factory.mktemp("failed-mart-test")
    copy, _ = _copy_of_grid(tmp_path)
    _execute(copy, "update mart_variance set ss_between = ss_between + 1")
    completed = dbt_build(copy, tmp_path, ("test", "--select", "mart_variance"))
    return copy, completed


@pytest.fixture(scope="module")
def failed_staging_test(tmp_path_factory):
    """The built grid warehouse, then eval_results with a duplicated row and `dbt build` again: the staging
    uniqueness test fails and dbt skips every model built on it."""
    tmp_path = tmp_path_factory.mktemp("failed-staging-test")
    copy, _ = _copy_of_grid(tmp_path)
    _execute(copy, "insert into eval_results select * from eval_results limit 1")
    return copy, dbt_build(copy, tmp_path)


def test_the_failed_test_is_recorded_with_its_rows(failed_mart_test):
    path, completed = failed_mart_test
    assert completed.returncode == 1
    status = build_status(path)
    (test,) = [t for t in status.failed_tests if t.name == "variance_decomposition_adds_up"]
    n_rows = read_table(path, "select count(*) as n from mart_variance")["n"].iloc[0]
    assert test.models == ("mart_variance",) and test.failures == n_rows
    assert len(test.rows) == min(n_rows, 20) and "ss_between" in test.rows.columns
    assert status.unbuilt_models == {} and not status.ok
    tampered = set(read_table(path, "select ss_between from mart_variance")["ss_between"])
    assert set(test.rows["ss_between"]) <= tampered


def test_report_and_summary_name_the_failed_test_and_flag_its_mart(failed_mart_test, tmp_path):
    path, _ = failed_mart_test
    report = write_report(path, tmp_path / "report")
    page = report.index.read_text()
    assert "<h2>Data tests</h2>" in page and "variance_decomposition_adds_up" in page
    section = page[page.index("<h3 id='mart_variance'>"):]
    assert "Failed dbt test variance_decomposition_adds_up" in section[:section.index("<table")]
    assert page.count("Failed dbt test") == 1  # only the mart it reads is flagged
    summary = findings_summary(path)
    assert "dbt test FAIL variance_decomposition_adds_up (on mart_variance)" in summary
    assert "ss_between" in summary and "Headline" in summary


def test_findings_command_prints_what_it_can_and_exits_non_zero(failed_mart_test, capsys, monkeypatch):
    from calib_assets.cli import main

    path, _ = failed_mart_test
    monkeypatch.delenv("CALIB_ASSETS_ROOT", raising=False)
    assert main(["--study", "ci", "--root", str(path.parent), "findings"]) == 1
    out, err = capsys.readouterr()
    assert "Dense model and calibration-free controls" in out and "Headline" in out
    assert "variance_decomposition_adds_up" in out and "1 failed test(s)" in err


def test_models_skipped_after_a_failed_staging_test_are_left_out_not_shown_stale(failed_staging_test, tmp_path):
    path, completed = failed_staging_test
    assert completed.returncode == 1
    status = build_status(path)
    assert any(t.name.startswith("unique_combination_stg_eval_results") for t in status.failed_tests)
    assert {"mart_spread", "mart_baselines", "mart_variance"} <= set(status.unbuilt_models)
    assert set(status.unbuilt_models.values()) == {"skipped"}
    report = write_report(path, tmp_path / "report")
    page = report.index.read_text()
    assert report.headline is None and "Left out: not built in the last dbt build (skipped)" in page
    assert "<table" in page  # the failing rows are shown
    assert "not available: mart_averages not built" in findings_summary(path)


def _materialize_findings(root):
    """dbt_marts and findings_report materialized over `root`/warehouse.duckdb, as the findings job does."""
    from calib_assets.defs.dbt import DUCKDB_ENV, build_dbt_assets, dbt_resource
    from calib_assets.defs.findings import build_findings_assets
    from calib_assets.defs.resources import ArtifactStore

    previous = os.environ.get(DUCKDB_ENV)
    try:
        with dg.instance_for_test() as instance:
            return dg.materialize([build_dbt_assets(), *build_findings_assets()], instance=instance,
                                  resources={"dbt": dbt_resource(),
                                             "store": ArtifactStore(root=str(root), study="grid")})
    finally:
        os.environ.pop(DUCKDB_ENV, None) if previous is None else os.environ.update({DUCKDB_ENV: previous})


def _materialized(result) -> set[str]:
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def test_no_mart_is_built_on_another_mart():
    """dbt skips the models built on a model whose test failed: with marts built only on staging and
    intermediate models, a failed test on one mart leaves every other mart built."""
    import json

    from calib_assets.defs.dbt import ensure_manifest

    manifest = json.loads(ensure_manifest().read_text())
    marts = {uid for uid, node in manifest["nodes"].items()
             if node["resource_type"] == "model" and node["name"].startswith("mart_")}
    assert len(marts) >= 12
    for uid in marts:
        assert not set(manifest["nodes"][uid]["depends_on"]["nodes"]) & marts, uid


def test_dagster_skips_the_report_after_a_failed_staging_test_and_the_runner_writes_it(
        failed_staging_test, tmp_path, monkeypatch):
    from calib_assets.runner import _write_report_after_skipped_marts

    path, _ = failed_staging_test
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(path, root / path.name)
    result = _materialize_findings(root)
    assert result.success  # a failed test is not a failed step
    failed = [check.check_name for check in result.get_asset_check_evaluations() if not check.passed]
    assert any(name.startswith("unique_combination_stg_eval_results") for name in failed)
    assert not {"mart_spread", "findings_report"} & _materialized(result)
    monkeypatch.setenv("CALIB_ASSETS_ROOT", str(root))
    lines = []
    _write_report_after_skipped_marts(lines.append)
    assert "findings_report was skipped" in lines[0]
    assert "<h2>Data tests</h2>" in (root / "report" / "index.html").read_text()
