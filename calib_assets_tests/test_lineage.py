"""The lineage tables and the eval_lineage view, checked against the artifacts on disk read independently."""

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from calib_assets import lineage, steps

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]


def _sql(database: Path, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.sql(sql).df()


def _set_sha(directory: Path) -> str:
    """A calibration set's fingerprint from its files: the token ids' sha256, then the rows of samples.jsonl
    (document, offset, text) as canonical JSON."""
    tokens = np.load(directory / "tokens.npy")
    token_sha = hashlib.sha256(repr(tokens.shape).encode() + tokens.astype("<i8").tobytes()).hexdigest()
    rows = [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines()]
    return hashlib.sha256(token_sha.encode() + json.dumps(rows, sort_keys=True).encode()).hexdigest()


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def test_eval_lineage_joins_every_result_to_the_artifacts_it_came_from(materialized):
    study, _, root, _, _ = materialized
    database = steps.warehouse_path(root)
    results = _sql(database, "select * from eval_results")
    view = _sql(database, "select * from eval_lineage")
    assert len(view) == len(results) > 0 and view["current"].all()
    base = {spec.name: _manifest(root / "models" / spec.name)["fingerprint"] for spec in study.models}
    corpora = {source: _manifest(root / "corpora" / source)["fingerprint"] for source in study.source_names}
    for row in view.itertuples():
        assert row.base_fingerprint == base[row.model]
        _, method = study.parse_variant(row.variant)
        if method is None:  # the dense model: its "checkpoint" is the base model itself
            assert row.checkpoint_fingerprint == base[row.model] and pd.isna(row.checkpoint_path)
        else:
            expected_dir = root / "checkpoints" / row.variant / (row.calib or "no-calibration")
            assert Path(row.checkpoint_path) == expected_dir
            assert row.checkpoint_fingerprint == _file_sha(next(expected_dir.glob("*.safetensors")))
        if row.calib is None:
            assert pd.isna(row.calibration_path) and row.calibration_fingerprint is None
            continue
        calibration = root / "calibration" / row.model / row.calib
        samples = [json.loads(line) for line in (calibration / "samples.jsonl").read_text().splitlines()]
        assert Path(row.calibration_path) == calibration
        assert row.calibration_fingerprint == _set_sha(calibration)
        assert row.calibration_documents == len({sample["doc_id"] for sample in samples})
        assert row.calibration_n_samples == len(samples) == study.calibration.n_samples
        assert row.source_fingerprint == corpora[row.calibration_source]
        assert row.pool_fingerprint == _manifest(root / "calibration-pools" / row.model / row.calibration_source)[
            "fingerprint"]


def test_lineage_tables_hold_one_row_per_materialized_partition(materialized):
    study, _, root, _, _ = materialized
    database = steps.warehouse_path(root)
    sets = _sql(database, "select * from lineage_calibration_sets")
    checkpoints = _sql(database, "select * from lineage_checkpoints")
    assert len(sets) == len(study.models) * len(study.calib_keys)
    assert len(checkpoints) == (len(study.variant_keys) * len(study.calib_keys)
                                + len(study.calibration_free_methods) * len(study.models))
    for row in sets.itertuples():  # a set's pool and corpus are exactly those on disk
        pool = _manifest(root / "calibration-pools" / row.model / row.source)
        assert row.pool_fingerprint == pool["fingerprint"]
        assert row.corpus_fingerprint == _manifest(root / "corpora" / row.source)["fingerprint"]
        assert row.seed in study.calibration.seeds and row.calib.endswith(f".s{row.seed}")
    for row in checkpoints.itertuples():
        tensors = next(Path(row.path).glob("*.safetensors"))
        assert row.fingerprint == _file_sha(tensors)
        assert row.file_bytes == tensors.stat().st_size
        assert json.loads(row.method_config)["method"] == row.method
        if row.calib is not None:
            assert row.calibration_fingerprint == _set_sha(root / "calibration" / row.model / row.calib)


def test_a_stale_evaluation_is_flagged_in_the_view_and_the_chain(materialized, tmp_path):
    study, _, root, _, _ = materialized
    copy = tmp_path / "root"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("model-cache", "*.duckdb", "*.wal"))
    model, calib = study.models[0].name, study.calib_keys[0]
    manifest_path = steps.calibration_dir(copy, model, calib) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["fingerprint"] = "0" * 64  # as if the set had been re-drawn after the checkpoints were built
    manifest_path.write_text(json.dumps(manifest))

    results = _sql(steps.warehouse_path(root), "select * from eval_results")
    steps.write_eval_results(results, steps.warehouse_path(copy),
                             also=[lambda connection: lineage.write_lineage_tables(study, copy, connection)])
    view = _sql(steps.warehouse_path(copy), "select variant, calib, current from eval_lineage")
    stale = view[~view["current"]]
    assert len(stale) > 0 and set(stale["calib"]) == {calib}
    assert set(stale["variant"]) == set(study.variant_keys)

    chain = lineage.trace(study, copy, f"{study.variant_keys[0]}|{calib}")
    checkpoint = next(node for node in chain if node.asset == "compressed_model")
    assert checkpoint.problems and "calibration_set" in checkpoint.problems[0]
    other = lineage.trace(study, copy, f"{study.variant_keys[0]}|{study.calib_keys[1]}")
    assert not any(node.problems for node in other)


def test_the_chain_of_a_checkpoint_names_each_upstream_artifact(materialized):
    study, _, root, _, _ = materialized
    variant, calib = study.variant_keys[0], study.calib_keys[1]
    chain = lineage.trace(study, root, f"{calib}|{variant}")  # Dagster's own order of the two dimensions
    assert [node.asset for node in chain] == ["evaluation", "compressed_model", "calibration_set",
                                              "calibration_pool", "text_corpus", "base_model"]
    model = study.models[0].name
    calibration = root / "calibration" / model / calib
    doc_ids = [json.loads(line)["doc_id"] for line in (calibration / "samples.jsonl").read_text().splitlines()]
    assert chain[2].fingerprint == _set_sha(calibration) and chain[2].details["doc_ids"] == doc_ids
    assert chain[1].fingerprint == _file_sha(next(steps.checkpoint_dir(root, variant, calib).glob("*.safetensors")))
    assert chain[5].fingerprint == _manifest(root / "models" / model)["fingerprint"]
    assert not any(node.problems for node in chain)


@pytest.mark.parametrize("keys, shown", [(["a", "b"], "a, b"), ([f"k{i}" for i in range(30)], "(18 more)")])
def test_long_lists_of_allowed_keys_are_truncated(keys, shown):
    text = lineage._allowed(keys)
    assert shown in text and len(text) < 200


def test_before_anything_is_materialized_the_tables_are_typed_and_empty(tmp_path):
    from calib_assets.study import load_study

    study = load_study("ci")
    database = steps.warehouse_path(tmp_path)
    counts = {}
    steps.write_eval_results(pd.DataFrame(columns=steps.EVAL_COLUMNS), database,
                             also=[lambda connection: counts.update(lineage.write_lineage_tables(study, tmp_path,
                                                                                                 connection))])
    assert counts == {name: 0 for name in lineage.TABLE_SCHEMAS}
    types = _sql(database, "select column_name, data_type from information_schema.columns "
                           "where table_name = 'lineage_checkpoints'")
    assert dict(zip(types["column_name"], types["data_type"])) == lineage.TABLE_SCHEMAS["lineage_checkpoints"]
    assert len(_sql(database, "select * from eval_lineage")) == 0
