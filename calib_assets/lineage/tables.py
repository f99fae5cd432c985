"""Lineage as DuckDB tables: every artifact's manifest on disk as a row of `lineage_*`, and the view
`eval_lineage` that joins every row of `eval_results` to its checkpoint, calibration set, source snapshot
and base model. Written by the single DuckDB writer, inside the transaction that writes eval_results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from calib_assets.steps import calibration_dir, checkpoint_dir, corpus_dir, model_dir, pool_dir, stored_manifest
from calib_assets.study import Study

V, I, F = "VARCHAR", "BIGINT", "DOUBLE"  # noqa: E741  (DuckDB type shorthands: Varchar, Integer, Float)
TABLE_SCHEMAS = {  # column -> DuckDB type (explicit, so that an empty table still has its types)
    "lineage_base_models": {"model": V, "fingerprint": V, "folder": V, "spec": V, "path": V},
    "lineage_source_snapshots": {"source": V, "fingerprint": V, "spec": V, "heldout_fraction": F, "documents": I,
                                 "calibration_documents": I, "heldout_documents": I, "path": V},
    "lineage_calibration_pools": {"model": V, "source": V, "fingerprint": V, "corpus_fingerprint": V,
                                  "base_fingerprint": V, "documents": I, "tokens": I, "path": V},
    "lineage_calibration_sets": {"model": V, "calib": V, "source": V, "seed": I, "n_samples": I, "seq_len": I,
                                 "sampler_seed": I, "n_documents": I, "fingerprint": V, "pool_fingerprint": V,
                                 "corpus_fingerprint": V, "base_fingerprint": V, "path": V},
    "lineage_checkpoints": {"variant": V, "calib": V, "model": V, "method": V, "method_label": V, "method_config": V,
                            "fingerprint": V, "calibration_fingerprint": V, "base_fingerprint": V, "size_bytes": I,
                            "file_bytes": I, "bits_per_param": F, "sparsity": F, "compress_seconds": F, "path": V},
}

# `current`: the artifacts on disk are exactly the ones the evaluation was computed from (a stale row,
# evaluated before an upstream partition was re-materialized, has current = false).
EVAL_LINEAGE_SQL = """
CREATE OR REPLACE VIEW eval_lineage AS
SELECT e.*,
       c.path AS checkpoint_path, c.size_bytes AS checkpoint_size_bytes, c.bits_per_param, c.sparsity,
       s.path AS calibration_path, s.seed AS calibration_seed, s.n_samples AS calibration_n_samples,
       s.seq_len AS calibration_seq_len, s.n_documents AS calibration_documents,
       s.pool_fingerprint, src.fingerprint AS source_fingerprint, src.path AS source_path,
       b.fingerprint AS base_fingerprint, b.folder AS base_folder,
       (e.checkpoint_fingerprint = coalesce(c.fingerprint, b.fingerprint)
        AND e.calibration_fingerprint IS NOT DISTINCT FROM s.fingerprint
        AND coalesce(c.base_fingerprint, b.fingerprint) = b.fingerprint
        AND (s.fingerprint IS NULL OR s.corpus_fingerprint = src.fingerprint)) AS current
FROM eval_results e
LEFT JOIN lineage_checkpoints c ON c.variant = e.variant AND c.calib IS NOT DISTINCT FROM e.calib
LEFT JOIN lineage_calibration_sets s ON s.model = e.model AND s.calib = e.calib
LEFT JOIN lineage_source_snapshots src ON src.source = s.source
LEFT JOIN lineage_base_models b ON b.model = e.model
"""


# -- tables --------------------------------------------------------------------------------------
def lineage_tables(study: Study, root: Path) -> dict[str, pd.DataFrame]:
    """One DataFrame per lineage table, from the manifests of every partition materialized under root."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE_SCHEMAS}
    for spec in study.models:
        if base := stored_manifest(model_dir(root, spec.name)):
            rows["lineage_base_models"].append(_base_row(spec.name, base, root))
    for source in study.source_names:
        if corpus := stored_manifest(corpus_dir(root, source)):
            rows["lineage_source_snapshots"].append(_source_row(source, corpus, root))
    for spec in study.models:
        for source in study.source_names:
            if pool := stored_manifest(pool_dir(root, spec.name, source)):
                rows["lineage_calibration_pools"].append(_pool_row(spec.name, source, pool, root))
        for calib in study.calib_keys:
            if calibration := stored_manifest(calibration_dir(root, spec.name, calib)):
                rows["lineage_calibration_sets"].append(_set_row(study, spec.name, calib, calibration, root))
    partitions: list[tuple[str, str | None]] = [(v, c) for v in study.variant_keys for c in study.calib_keys]
    partitions += [(v, None) for v in study.baseline_keys if study.parse_variant(v)[1] is not None]
    for variant, variant_calib in partitions:
        if checkpoint := stored_manifest(checkpoint_dir(root, variant, variant_calib)):
            rows["lineage_checkpoints"].append(_checkpoint_row(variant, variant_calib, checkpoint, root))
    return {name: pd.DataFrame(rows[name], columns=list(schema)) for name, schema in TABLE_SCHEMAS.items()}


def _base_row(model: str, manifest: dict, root: Path) -> dict[str, Any]:
    return {"model": model, "fingerprint": manifest["fingerprint"], "folder": manifest.get("folder"),
            "spec": json.dumps(manifest.get("spec", {}), sort_keys=True),
            "path": str(model_dir(root, model))}


def _source_row(source: str, manifest: dict, root: Path) -> dict[str, Any]:
    inputs, summary = manifest.get("inputs", {}), manifest.get("summary", {})
    splits = summary.get("splits", {})
    return {"source": source, "fingerprint": manifest["fingerprint"],
            "spec": json.dumps(inputs.get("spec", {}), sort_keys=True),
            "heldout_fraction": inputs.get("heldout_fraction"), "documents": summary.get("documents"),
            "calibration_documents": splits.get("calibration", {}).get("documents"),
            "heldout_documents": splits.get("heldout", {}).get("documents"),
            "path": str(corpus_dir(root, source))}


def _pool_row(model: str, source: str, manifest: dict, root: Path) -> dict[str, Any]:
    inputs = manifest.get("inputs", {})
    return {"model": model, "source": source, "fingerprint": manifest["fingerprint"],
            "corpus_fingerprint": inputs.get("corpus_fingerprint"), "base_fingerprint": inputs.get("model_fingerprint"),
            "documents": manifest.get("documents"), "tokens": manifest.get("tokens"),
            "path": str(pool_dir(root, model, source))}


def _set_row(study: Study, model: str, calib: str, manifest: dict, root: Path) -> dict[str, Any]:
    source = manifest.get("source") or study.parse_calib(calib)[0]
    pool = stored_manifest(pool_dir(root, model, source)) or {}
    pool_inputs = pool.get("inputs", {})
    return {"model": model, "calib": calib, "source": source, "seed": manifest.get("seed"),
            "n_samples": manifest.get("n_samples"), "seq_len": manifest.get("seq_len"),
            "sampler_seed": manifest.get("sampler_seed"), "n_documents": len(set(manifest.get("doc_ids", []))),
            "fingerprint": manifest["fingerprint"],
            "pool_fingerprint": manifest.get("inputs", {}).get("pool_fingerprint"),
            "corpus_fingerprint": pool_inputs.get("corpus_fingerprint"),
            "base_fingerprint": pool_inputs.get("model_fingerprint"),
            "path": str(calibration_dir(root, model, calib))}


def _checkpoint_row(variant: str, calib: str | None, manifest: dict, root: Path) -> dict[str, Any]:
    method = manifest.get("method", {})
    return {"variant": variant, "calib": calib, "model": manifest.get("model"), "method": method.get("method"),
            "method_label": manifest.get("method_label"), "method_config": json.dumps(method, sort_keys=True),
            "fingerprint": manifest["fingerprint"], "calibration_fingerprint": manifest.get("calibration_fingerprint"),
            "base_fingerprint": manifest.get("base_fingerprint"), "size_bytes": manifest.get("size_bytes"),
            "file_bytes": manifest.get("file_bytes"), "bits_per_param": manifest.get("bits_per_param"),
            "sparsity": manifest.get("sparsity"), "compress_seconds": manifest.get("compress_seconds"),
            "path": str(checkpoint_dir(root, variant, calib))}


def write_lineage_tables(study: Study, root: Path, connection) -> dict[str, int]:
    """Replace the lineage tables and the eval_lineage view on an open DuckDB connection (inside the
    caller's transaction, after eval_results is written); return each table's row count."""
    counts = {}
    for name, table in lineage_tables(study, Path(root)).items():
        columns = ", ".join(f"{column} {kind}" for column, kind in TABLE_SCHEMAS[name].items())
        connection.execute(f"CREATE OR REPLACE TABLE {name} ({columns})")
        if len(table):
            connection.register(f"incoming_{name}", table)
            connection.execute(f"INSERT INTO {name} SELECT * FROM incoming_{name}")
            connection.unregister(f"incoming_{name}")
        counts[name] = len(table)
    connection.execute(EVAL_LINEAGE_SQL)
    return counts
