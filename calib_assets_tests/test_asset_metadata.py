"""What the Dagster UI shows: every asset described and owned, and materialization metadata that renders."""

import json

import dagster as dg
import duckdb
import pandas as pd
import pytest

from calib_assets import steps
from calib_assets.defs import build_definitions
from calib_assets.defs.metadata import calibration_preview, check_outcome, markdown_table, rounded
from calib_assets.study import load_study


def test_every_asset_has_a_description_owners_a_group_and_kinds(tmp_path):
    defs = build_definitions(load_study("ci"), root=str(tmp_path))
    specs = list(defs.resolve_all_asset_specs())
    assert len(specs) >= 10
    for spec in specs:
        name = spec.key.to_user_string()
        assert spec.description and spec.description.strip(), name
        assert spec.owners, name
        assert spec.group_name and spec.group_name != "default", name
        assert spec.kinds, name


def test_markdown_cells_cannot_break_the_table():
    table = markdown_table([{"a": "x|y", "b": "line\nbreak"}], ["a", "b"])
    lines = table.splitlines()
    assert len(lines) == 3 and lines[2] == "| x\\|y | line break |"
    assert all(line.count("|") - line.count("\\|") == 3 for line in lines)


@pytest.mark.parametrize(("value", "shown"), [(4.361111111111111, 4.361), (0.5, 0.5), (123456.7, 123457.0),
                                               (0.000123456, 0.0001235), (-2.71828, -2.718), (0.0, 0.0)])
def test_numbers_are_rounded_to_four_significant_digits(value, shown):
    assert rounded(value) == shown


def test_check_results_say_what_passed_and_what_failed():
    description, values = check_outcome("every task document is held-out text.", [])
    assert description == "Passed: every task document is held-out text." and values == {"problems": 0}
    problems = [f"doc{i} appears in calibration set abc.s0" for i in range(25)]
    description, values = check_outcome("every task document is held-out text.", problems, shown=20)
    assert description == "Failed (25 problems): every task document is held-out text."
    listed = values["problem_list"].value.splitlines()
    assert listed[:20] == [f"- {problem}" for problem in problems[:20]] and listed[20] == "- ... and 5 more"
    assert values["problems"] == 25


def test_calibration_preview_shows_the_first_windows(tmp_path):
    samples = [{"doc_id": f"doc{i}", "offset": 10 * i, "text": "word " * 100} for i in range(5)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(sample) + "\n" for sample in samples))
    text = calibration_preview(path, n=3, chars=20).value
    rows = text.splitlines()[2:]
    assert [row.split(" | ")[1] for row in rows] == ["doc0", "doc1", "doc2"]
    assert all(row.endswith("word word word word …|") or row.endswith("word word word word … |") for row in rows)


def _latest(instance, asset: str, partition: str | dg.MultiPartitionKey | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1).records
    return records[0].event_log_entry.asset_materialization.metadata


@pytest.mark.integration
@pytest.mark.xdist_group("pipeline")
def test_materializations_carry_previews_sizes_and_tables(materialized):
    study, _, root, instance, _ = materialized
    model, calib, variant = study.models[0].name, study.calib_keys[0], study.variant_keys[0]

    metadata = _latest(instance, "calibration_set", dg.MultiPartitionKey({"model": model, "calib": calib}))
    samples = (steps.calibration_dir(root, model, calib) / "samples.jsonl").read_text().splitlines()
    preview = metadata["preview"].value
    assert all(json.loads(line)["doc_id"] in preview for line in samples[:3])
    assert metadata["path"].value == str(steps.calibration_dir(root, model, calib))

    metadata = _latest(instance, "compressed_model", dg.MultiPartitionKey({"variant": variant, "calib": calib}))
    directory = steps.checkpoint_dir(root, variant, calib)
    on_disk = sum(path.stat().st_size for path in directory.iterdir())
    assert metadata["size_on_disk_mb"].value == pytest.approx(on_disk / 1e6, abs=1e-4)
    from safetensors.torch import load_file

    tensors = load_file(str(next(directory.glob("*.safetensors"))))
    stored_bits = 8 * sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    manifest = json.loads((directory / "manifest.json").read_text())
    n_params = sum(layer["params"] for layer in manifest["layers"].values())
    assert metadata["bits_per_param"].value == pytest.approx(stored_bits / n_params, rel=5e-4)  # 4 digits shown
    assert metadata["sparsity"].value == pytest.approx(manifest["sparsity"], rel=5e-4)
    assert metadata["path"].value == str(directory)
    set_link = f"/assets/calibration_set?view=partitions&partition={calib}%7C{model}"  # the UI's calib|model key
    assert metadata["calibration_set"].value == set_link

    metadata = _latest(instance, "evaluation", dg.MultiPartitionKey({"variant": variant, "calib": calib}))
    table = pd.read_parquet(steps.evaluation_dir(root, variant, calib) / "results.parquet")
    lines = metadata["results"].value.splitlines()
    assert len(lines) == 2 + len(table)
    assert all(f"| {row.eval_dataset} | {row.metric} |" in metadata["results"].value for row in table.itertuples())
    assert metadata["calibration_set"].value == set_link

    descriptors = json.loads((steps.calibration_dir(root, model, calib) / "descriptors.json").read_text())["set"]
    for asset in ["calibration_set", "calib_inspection"]:
        shown = _latest(instance, asset, dg.MultiPartitionKey({"model": model, "calib": calib}))["descriptors"].value
        rows = dict(line.strip("| ").split(" | ") for line in shown.splitlines()[2:])
        assert rows.keys() == descriptors.keys(), asset
        assert all(float(rows[name]) == pytest.approx(value, rel=5e-4) for name, value in descriptors.items()), asset
    # the run materialized each inspection once: nothing was there to reuse
    assert _latest(instance, "calib_inspection",
                   dg.MultiPartitionKey({"model": model, "calib": calib}))["reused"].value is False

    metadata = _latest(instance, "eval_results")
    with duckdb.connect(str(steps.warehouse_path(root)), read_only=True) as connection:
        rows = connection.execute("select count(*) from eval_results").fetchone()[0]
        lineage_rows = {name: connection.execute(f"select count(*) from {name}").fetchone()[0]
                        for name in metadata["lineage_rows"].value}
        per_metric = dict(connection.execute("select metric, count(*) from eval_results group by metric").fetchall())
    assert metadata["rows"].value == rows and metadata["lineage_rows"].value == lineage_rows
    assert metadata["rows_per_metric"].value == per_metric
    assert len(metadata["preview"].value.splitlines()) == 2 + min(rows, 20)
