"""Figures, report and headline table from marts built by dbt over synthetic eval_results tables."""

from __future__ import annotations

import html.parser
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calib_assets.findings import findings_summary, headline_table, read_marts, write_report
from calib_assets.findings.figures import FIGURES
from calib_assets.findings.tables import REPORT_MARTS
from calib_assets_tests.findings_fixtures import built_warehouse

pytestmark = pytest.mark.xdist_group("dbt_marts")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", params=["grid", "quantity"])
def warehouse(request):
    path, results, completed = built_warehouse(request.param)
    assert completed.returncode == 0, completed.stdout[-5000:]
    return path, results


@pytest.fixture(scope="module")
def report(warehouse, tmp_path_factory):
    path, _ = warehouse
    return write_report(path, tmp_path_factory.mktemp("report") / "report")


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.images, self.ids = set(), set(), set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.hrefs.add(attrs.get("href"))
        if tag == "img":
            self.images.add(attrs.get("src"))
        if "id" in attrs:
            self.ids.add(attrs["id"])


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_figure_is_a_valid_png(report):
    from PIL import Image

    assert set(report.figures) == set(FIGURES)
    for path in report.figures.values():
        width, height = _png_size(path)
        assert width > 200 and height > 100
        with Image.open(path) as image:
            image.verify()


def test_report_links_every_figure_and_shows_every_mart(report):
    links = _Links()
    links.feed(report.index.read_text())
    names = {path.name for path in report.figures.values()}
    assert names <= links.hrefs and names <= links.images
    assert all((report.index.parent / name).is_file() for name in links.images)
    assert set(REPORT_MARTS) <= links.ids


def test_report_tables_hold_the_marts_rows(report, warehouse):
    path, _ = warehouse
    pytest.importorskip("lxml")
    tables = pd.read_html(report.index, flavor="lxml")
    spread = read_marts(path, ["mart_spread"])["mart_spread"]
    shown = next(t for t in tables if set(spread.columns) <= set(t.columns))
    assert len(shown) == min(len(spread), 200)


def test_headline_is_the_range_of_the_task_average_over_all_sets():
    path, results, _ = built_warehouse("grid")
    table = headline_table(path)
    calibrated = results[results["calib"].notna() & (results["metric"] == "acc")]
    averages = calibrated.groupby(["method", "calib"])["value"].mean()
    expected = averages.groupby(level="method").agg(["min", "max", "count"])
    assert list(table["method"]) == list(expected.index) and set(table["score"]) == {"task_average acc %"}
    np.testing.assert_allclose(table["range"], 100 * (expected["max"] - expected["min"]), rtol=1e-12)
    assert list(table["n_sets"]) == list(expected["count"])
    dense = results[(results["method"] == "dense") & (results["metric"] == "acc")]["value"].mean()
    np.testing.assert_allclose(table["dense"], 100 * dense, rtol=1e-12)


def test_headline_falls_back_to_perplexity_without_tasks():
    path, results, _ = built_warehouse("quantity")
    table = headline_table(path)
    perplexity = results[results["calib"].notna() & (results["metric"] == "perplexity")]
    assert len(table) == perplexity.groupby(["eval_dataset", "n_samples"]).ngroups
    assert set(table["score"]) == {f"{d} perplexity" for d in perplexity["eval_dataset"].unique()}
    summary = findings_summary(path, path.parent / "nowhere" / "index.html")
    assert "Headline" in summary and "not written yet" in summary


def test_a_failed_report_leaves_the_previous_one(report, warehouse, monkeypatch):
    from calib_assets.findings import report as report_module

    path, _ = warehouse
    before = report.index.read_bytes()
    monkeypatch.setattr(report_module, "render_figures", _raise)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_report(path, report.index.parent)
    assert report.index.read_bytes() == before and all(p.is_file() for p in report.figures.values())


def _raise(*args, **kwargs):
    raise RuntimeError("drawing failed")


def test_a_warehouse_that_dbt_never_built_has_no_report(tmp_path):
    import duckdb

    empty = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(empty)).close()
    with pytest.raises(LookupError, match="no dbt build has run.*mart_spread: no such table"):
        write_report(empty, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_tables_under_their_earlier_names_are_named_as_stale_and_kept(warehouse, tmp_path):
    """A warehouse written before the asset renames still holds e.g. mart_calibration_spread: the report and the
    printed findings say it is no longer updated and which table replaces it, and leave it as it was."""
    import duckdb

    from calib_assets.findings.build_status import RENAMED_TABLES

    path, _ = warehouse
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    with duckdb.connect(str(copy)) as connection:
        connection.execute("create table mart_calibration_spread as select * from mart_spread")
        before = connection.sql("select * from mart_calibration_spread").df()
    models = {sql.stem for sql in (Path(__file__).parents[1] / "dbt" / "models").rglob("*.sql")}
    assert set(RENAMED_TABLES.values()) <= models | {"set_descriptors"} and not set(RENAMED_TABLES) & models
    expected = "no longer updated: mart_calibration_spread (now mart_spread)"
    assert expected in write_report(copy, tmp_path / "report").index.read_text()
    assert expected in findings_summary(copy)
    assert expected not in findings_summary(path)  # a warehouse with only the current names
    with duckdb.connect(str(copy), read_only=True) as connection:
        pd.testing.assert_frame_equal(connection.sql("select * from mart_calibration_spread").df(), before)


def test_the_report_is_reproducible(report, warehouse, tmp_path):
    path, _ = warehouse
    again = write_report(path, tmp_path / "again")
    assert again.fingerprint == report.fingerprint
    shutil.rmtree(tmp_path / "again")


def test_accuracies_are_percent_in_every_table_and_other_metrics_as_they_are():
    from calib_assets.findings.tables import in_percent

    table = pd.DataFrame({"metric": ["acc", "acc_norm", "acc_flip_share", "perplexity", "kl_vs_dense"],
                          "value": [0.25, 0.5, 0.125, 31.5, 0.75]})
    shown = in_percent(table, ["value"])
    assert list(shown["metric"]) == ["acc %", "acc_norm %", "acc_flip_share %", "perplexity", "kl_vs_dense"]
    assert list(shown["value"]) == [25.0, 50.0, 12.5, 31.5, 0.75]
    assert list(table["value"]) == [0.25, 0.5, 0.125, 31.5, 0.75]  # the marts' rows stay fractions


def _report_tables(report) -> list[pd.DataFrame]:
    return pd.read_html(report.index, flavor="lxml")


def test_report_rows_are_ordered_by_method_then_source_then_set(report):
    checked = 0
    for table in _report_tables(report):
        keys = [column for column in ("method", "calibration_source", "n_samples", "calib") if column in table]
        if "method" not in keys or len(keys) < 2 or "overall_rank" in table:
            continue
        rows = [tuple(value if key == "n_samples" else str(value) for key, value in zip(keys, row))
                for row in table[keys].itertuples(index=False, name=None)]
        assert rows == sorted(rows), keys
        checked += 1
    assert checked >= 3


def test_paired_test_names_no_best_or_worst_set_when_the_sets_answer_alike(report, warehouse):
    path, _ = warehouse
    paired = read_marts(path, ["mart_paired_test"])["mart_paired_test"]
    columns = {"best_calib", "difference", "n_examples"}
    shown = next((table for table in _report_tables(report) if columns <= set(table)), None)
    if paired.empty:  # a study with one calibration set per group has nothing to pair
        assert shown is None
        return
    assert len(shown) == len(paired)
    tie = shown["difference"].abs() < 1e-12
    assert (shown.loc[tie, ["best_calib", "worst_calib"]] == "no difference").all().all()
    assert not shown.loc[~tie, "best_calib"].isin(["no difference"]).any()
    assert set(shown.loc[~tie, "best_calib"]) <= set(paired["best_calib"])


def test_report_has_a_calibration_descriptor_section(tmp_path):
    from calib_assets.findings.report import DESCRIPTOR_HIDDEN

    path, _, completed = built_warehouse("degenerate")
    assert completed.returncode == 0, completed.stdout[-5000:]
    report = write_report(path, tmp_path / "report")
    descriptors = read_marts(path, ["stg_descriptors"])["stg_descriptors"]
    assert len(descriptors) > 0
    assert "<h2>Calibration sets</h2>" in report.index.read_text()
    shown = next(table for table in _report_tables(report) if {"zipf_exponent", "calib"} <= set(table))
    assert len(shown) == len(descriptors)
    assert set(shown.columns) == set(descriptors.columns) - set(DESCRIPTOR_HIDDEN)
