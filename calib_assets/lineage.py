"""Lineage you can query: every artifact's manifest on disk, as DuckDB tables and as a chain.

The manifests already hold each artifact's content hash (`fingerprint`) and the fingerprints of what it
was built from. This module gathers them into tables (`lineage_*`) and a view `eval_lineage` that joins
every row of `eval_results` to its checkpoint, calibration set, source snapshot and base model, and it
walks the same links for one partition (`trace`) or writes the exact calibration data of a set out
(`export_calibration`). Plain Python: no Dagster.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from calib_assets import steps
from calib_assets.artifacts import UnsafeOutput, check_output_folder, read_json, sha256_files, verify_contents, write_json
from calib_assets.study import Study

V, I, F = "VARCHAR", "BIGINT", "DOUBLE"
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
def _manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / steps.MANIFEST
    return read_json(path) if path.is_file() else None


def lineage_tables(study: Study, root: Path) -> dict[str, pd.DataFrame]:
    """One DataFrame per lineage table, from the manifests of every partition materialized under root."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE_SCHEMAS}
    for spec in study.models:
        if base := _manifest(steps.model_dir(root, spec.name)):
            rows["lineage_base_models"].append(_base_row(spec.name, base, root))
    for source in study.source_names:
        if corpus := _manifest(steps.corpus_dir(root, source)):
            rows["lineage_source_snapshots"].append(_source_row(source, corpus, root))
    for spec in study.models:
        for source in study.source_names:
            if pool := _manifest(steps.pool_dir(root, spec.name, source)):
                rows["lineage_calibration_pools"].append(_pool_row(spec.name, source, pool, root))
        for calib in study.calib_keys:
            if calibration := _manifest(steps.calibration_dir(root, spec.name, calib)):
                rows["lineage_calibration_sets"].append(_set_row(study, spec.name, calib, calibration, root))
    partitions = [(v, c) for v in study.variant_keys for c in study.calib_keys]
    partitions += [(v, None) for v in study.baseline_keys if study.parse_variant(v)[1] is not None]
    for variant, calib in partitions:
        if checkpoint := _manifest(steps.checkpoint_dir(root, variant, calib)):
            rows["lineage_checkpoints"].append(_checkpoint_row(variant, calib, checkpoint, root))
    return {name: pd.DataFrame(rows[name], columns=list(schema)) for name, schema in TABLE_SCHEMAS.items()}


def _base_row(model: str, manifest: dict, root: Path) -> dict[str, Any]:
    return {"model": model, "fingerprint": manifest["fingerprint"], "folder": manifest.get("folder"),
            "spec": json.dumps(manifest.get("spec", {}), sort_keys=True),
            "path": str(steps.model_dir(root, model))}


def _source_row(source: str, manifest: dict, root: Path) -> dict[str, Any]:
    inputs, summary = manifest.get("inputs", {}), manifest.get("summary", {})
    splits = summary.get("splits", {})
    return {"source": source, "fingerprint": manifest["fingerprint"],
            "spec": json.dumps(inputs.get("spec", {}), sort_keys=True),
            "heldout_fraction": inputs.get("heldout_fraction"), "documents": summary.get("documents"),
            "calibration_documents": splits.get("calibration", {}).get("documents"),
            "heldout_documents": splits.get("heldout", {}).get("documents"),
            "path": str(steps.corpus_dir(root, source))}


def _pool_row(model: str, source: str, manifest: dict, root: Path) -> dict[str, Any]:
    inputs = manifest.get("inputs", {})
    return {"model": model, "source": source, "fingerprint": manifest["fingerprint"],
            "corpus_fingerprint": inputs.get("corpus_fingerprint"), "base_fingerprint": inputs.get("model_fingerprint"),
            "documents": manifest.get("documents"), "tokens": manifest.get("tokens"),
            "path": str(steps.pool_dir(root, model, source))}


def _set_row(study: Study, model: str, calib: str, manifest: dict, root: Path) -> dict[str, Any]:
    source = manifest.get("source") or study.parse_calib(calib)[0]
    pool = _manifest(steps.pool_dir(root, model, source)) or {}
    pool_inputs = pool.get("inputs", {})
    return {"model": model, "calib": calib, "source": source, "seed": manifest.get("seed"),
            "n_samples": manifest.get("n_samples"), "seq_len": manifest.get("seq_len"),
            "sampler_seed": manifest.get("sampler_seed"), "n_documents": len(set(manifest.get("doc_ids", []))),
            "fingerprint": manifest["fingerprint"],
            "pool_fingerprint": manifest.get("inputs", {}).get("pool_fingerprint"),
            "corpus_fingerprint": pool_inputs.get("corpus_fingerprint"),
            "base_fingerprint": pool_inputs.get("model_fingerprint"),
            "path": str(steps.calibration_dir(root, model, calib))}


def _checkpoint_row(variant: str, calib: str | None, manifest: dict, root: Path) -> dict[str, Any]:
    method = manifest.get("method", {})
    return {"variant": variant, "calib": calib, "model": manifest.get("model"), "method": method.get("method"),
            "method_label": manifest.get("method_label"), "method_config": json.dumps(method, sort_keys=True),
            "fingerprint": manifest["fingerprint"], "calibration_fingerprint": manifest.get("calibration_fingerprint"),
            "base_fingerprint": manifest.get("base_fingerprint"), "size_bytes": manifest.get("size_bytes"),
            "file_bytes": manifest.get("file_bytes"), "bits_per_param": manifest.get("bits_per_param"),
            "sparsity": manifest.get("sparsity"), "compress_seconds": manifest.get("compress_seconds"),
            "path": str(steps.checkpoint_dir(root, variant, calib))}


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


# -- one partition's chain -----------------------------------------------------------------------
class LineageError(ValueError):
    """A target that names no partition of the study, or one not materialized yet."""


@dataclass
class Node:
    asset: str
    partition: str
    fingerprint: str | None
    path: str
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # links whose fingerprints disagree (stale lineage)

    @property
    def materialized(self) -> bool:
        return self.fingerprint is not None


@dataclass
class Target:
    """What a target names: a (variant, calib) evaluation, a (model, calib) set, a (model, source) pool,
    a baseline variant, a model or a source."""

    kind: str
    keys: dict[str, str | None]


def _allowed(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys) - limit} more)" if len(keys) > limit else shown


def parse_target(study: Study, target: str) -> Target:
    """A partition key of any asset; the two parts of a multi-partition key may come in either order
    (`variant|calib` or Dagster's own `calib|variant`)."""
    parts = [part.strip() for part in target.split("|")]
    models = [model.name for model in study.models]
    names = {"variant": study.variant_keys, "baseline": study.baseline_keys, "calib": study.calib_keys,
             "model": models, "source": study.source_names}
    roles = {}
    for part in parts:
        role = next((role for role, keys in names.items() if part in keys), None)
        if role is None or role in roles:
            break
        roles[role] = part
    else:
        for kind, needed in [("evaluation", {"variant", "calib"}), ("calibration_set", {"model", "calib"}),
                             ("calibration_pool", {"model", "source"}), ("baseline", {"baseline"}),
                             ("base_model", {"model"}), ("text_corpus", {"source"})]:
            if set(roles) == needed:
                return Target(kind, roles)
    if len(parts) == 1 and parts[0] in study.variant_keys:
        raise LineageError(f"variant {parts[0]!r} has one checkpoint per calibration set: give "
                           f"{parts[0]}|CALIB with CALIB one of {_allowed(study.calib_keys)}")
    examples = [f"{study.variant_keys[0]}|{study.calib_keys[0]}", f"{models[0]}|{study.calib_keys[0]}",
                study.baseline_keys[0], f"{models[0]}|{study.source_names[0]}", models[0], study.source_names[0]]
    raise LineageError(
        f"{target!r} is not a partition of study {study.name!r}. Give VARIANT|CALIB (checkpoint, evaluation), "
        f"MODEL|CALIB (calibration set), MODEL|SOURCE (pool), a baseline, a model or a source, "
        f"e.g. {', '.join(examples)}.\n  variants: {_allowed(study.variant_keys)}\n"
        f"  calibs: {_allowed(study.calib_keys)}\n  baselines: {_allowed(study.baseline_keys)}\n"
        f"  models: {_allowed(models)}\n  sources: {_allowed(study.source_names)}")


def trace(study: Study, root: Path, target: str, *, metric: str | None = None,
          dataset: str | None = None) -> list[Node]:
    """The chain from the target down to the base model: [evaluation ->] checkpoint -> calibration set ->
    pool -> corpus snapshot -> base model, read from the manifests on disk. The target itself must be
    materialized; `metric`/`dataset` select the evaluation rows shown."""
    parsed = parse_target(study, target)
    root = Path(root)
    keys = parsed.keys
    if parsed.kind in ("evaluation", "baseline"):
        variant, calib = keys.get("variant") or keys["baseline"], keys.get("calib")
        model_spec, method = study.parse_variant(variant)
        chain = [_evaluation_node(root, variant, calib, metric, dataset)]
        if method is not None:
            chain.append(_checkpoint_node(root, variant, calib))
        chain += _calibration_chain(study, root, model_spec.name, calib) if calib else []
        chain.append(_base_node(root, model_spec.name))
    elif parsed.kind == "calibration_set":
        chain = _calibration_chain(study, root, keys["model"], keys["calib"]) + [_base_node(root, keys["model"])]
    elif parsed.kind == "calibration_pool":
        chain = [_pool_node(root, keys["model"], keys["source"]), _corpus_node(root, keys["source"]),
                 _base_node(root, keys["model"])]
    elif parsed.kind == "base_model":
        chain = [_base_node(root, keys["model"])]
    else:
        chain = [_corpus_node(root, keys["source"])]
    # the target itself: for an evaluation partition its checkpoint is enough (evaluation still to run)
    target_nodes = chain[:2] if parsed.kind in ("evaluation", "baseline") else chain[:1]
    if not any(node.materialized for node in target_nodes):
        _not_materialized(target_nodes[-1])
    _check_links(chain)
    return chain


def _not_materialized(node: Node) -> None:
    raise LineageError(f"{node.asset} [{node.partition}] is not materialized yet (no manifest under {node.path}); "
                       "materialize it first (Dagster UI or `calib-assets run`)")


def _node(asset: str, partition: str, directory: Path, **details: Any) -> tuple[Node, dict[str, Any]]:
    manifest = _manifest(directory) or {}
    node = Node(asset, partition, manifest.get("fingerprint"), str(directory), details)
    if manifest:
        node.problems += [f"corrupt: {problem}; {steps.rebuild_hint(asset, partition)}"
                          for problem in verify_contents(directory)]
    return node, manifest


def _evaluation_node(root: Path, variant: str, calib: str | None, metric: str | None, dataset: str | None) -> Node:
    directory = steps.evaluation_dir(root, variant, calib)
    node, manifest = _node("evaluation" if calib else "baseline_evaluation",
                           f"{variant}|{calib}" if calib else variant, directory)
    if node.problems and (metric or dataset):
        raise LineageError(f"{node.asset} [{node.partition}]: {node.problems[0]}")
    if not node.materialized or node.problems:
        if metric or dataset:
            _not_materialized(node)
        return node
    table = steps.read_evaluation(root, variant, calib)
    wanted = pd.Series(True, index=table.index)
    if metric:
        wanted &= table["metric"] == metric
    if dataset:
        wanted &= table["eval_dataset"] == dataset
    selected = table[wanted]
    if selected.empty:
        raise LineageError(f"no result of {node.asset} [{node.partition}] with metric={metric!r}, "
                           f"dataset={dataset!r}; metrics: {_allowed(sorted(table['metric'].unique()))}; "
                           f"datasets: {_allowed(sorted(table['eval_dataset'].unique()))}")
    first = table.iloc[0]
    node.details = {
        "checkpoint_fingerprint": first["checkpoint_fingerprint"],
        "calibration_fingerprint": first["calibration_fingerprint"],
        "results": [{"eval_dataset": row.eval_dataset, "metric": row.metric, "value": float(row.value)}
                    for row in selected.itertuples()]}
    return node


def _checkpoint_node(root: Path, variant: str, calib: str | None) -> Node:
    node, manifest = _node("compressed_model" if calib else "baseline_model", f"{variant}|{calib}" if calib else variant,
                           steps.checkpoint_dir(root, variant, calib))
    node.details = {key: manifest.get(key) for key in ("method_label", "size_bytes", "bits_per_param", "sparsity",
                                                          "compress_seconds", "calibration_fingerprint",
                                                          "base_fingerprint") if key in manifest}
    return node


def _calibration_chain(study: Study, root: Path, model: str, calib: str) -> list[Node]:
    node, manifest = _node("calibration_set", f"{model}|{calib}", steps.calibration_dir(root, model, calib))
    source = manifest.get("source") or study.parse_calib(calib)[0]
    if manifest:
        doc_ids = manifest.get("doc_ids", [])
        node.details = {"source": source, "seed": manifest.get("seed"), "shape": manifest.get("shape"),
                        "n_documents": len(set(doc_ids)), "doc_ids": doc_ids,
                        "pool_fingerprint": manifest.get("inputs", {}).get("pool_fingerprint")}
    return [node, _pool_node(root, model, source), _corpus_node(root, source)]


def _pool_node(root: Path, model: str, source: str) -> Node:
    node, manifest = _node("calibration_pool", f"{model}|{source}", steps.pool_dir(root, model, source))
    inputs = manifest.get("inputs", {})
    node.details = {key: value for key, value in {
        "documents": manifest.get("documents"), "tokens": manifest.get("tokens"),
        "corpus_fingerprint": inputs.get("corpus_fingerprint"),
        "base_fingerprint": inputs.get("model_fingerprint")}.items() if value is not None}
    return node


def _corpus_node(root: Path, source: str) -> Node:
    node, manifest = _node("text_corpus", source, steps.corpus_dir(root, source))
    if manifest:
        node.details = {"documents": manifest.get("summary", {}).get("documents"),
                        "spec": manifest.get("inputs", {}).get("spec")}
    return node


def _base_node(root: Path, model: str) -> Node:
    node, manifest = _node("base_model", model, steps.model_dir(root, model))
    if manifest:
        node.details = {"folder": manifest.get("folder")}
    return node


# Which detail of a node must equal the fingerprint of which later node in the chain.
_LINKS = {"checkpoint_fingerprint": ("compressed_model", "baseline_model", "base_model"),
          "calibration_fingerprint": ("calibration_set",), "pool_fingerprint": ("calibration_pool",),
          "corpus_fingerprint": ("text_corpus",), "base_fingerprint": ("base_model",)}


def _check_links(chain: list[Node]) -> None:
    for index, node in enumerate(chain):
        for detail, assets in _LINKS.items():
            expected = node.details.get(detail)
            upstream = next((other for other in chain[index + 1:] if other.asset in assets), None)
            if expected and upstream is not None and upstream.fingerprint != expected:
                node.problems.append(f"built from {upstream.asset} {expected[:12]}, but {upstream.partition} on disk "
                                     f"is {str(upstream.fingerprint)[:12]}: re-materialize {node.asset}")


def chain_as_dicts(chain: list[Node]) -> list[dict[str, Any]]:
    return [{**asdict(node), "materialized": node.materialized} for node in chain]


def format_chain(chain: list[Node], max_doc_ids: int = 8) -> str:
    lines = []

    def field(label: str, value: Any) -> None:
        lines.append(f"     {label:<24}{value}")

    for index, node in enumerate(chain):
        lines.append(f"{'   ' if index == 0 else '-> '}{node.asset} [{node.partition}]")
        field("fingerprint", node.fingerprint or "(not materialized)")
        field("path", node.path)
        for key, value in node.details.items():
            if key == "results":
                for result in value:
                    field("result", f"{result['metric']} on {result['eval_dataset']} = {result['value']:.6g}")
            elif key == "doc_ids":
                shown = ", ".join(value[:max_doc_ids]) + (", ..." if len(value) > max_doc_ids else "")
                field("doc_ids", f"{len(value)} windows: {shown}")
            elif value is not None:
                field(key, json.dumps(value) if isinstance(value, dict | list) else value)
        for problem in node.problems:
            field("STALE", problem)
    return "\n".join(lines)


# -- export --------------------------------------------------------------------------------------
EXPORT_FILES = ("samples.jsonl", "token_ids.npy", "token_ids.jsonl", "manifest.json")


def export_calibration(study: Study, root: Path, model: str, calib: str, out: Path, *,
                       force: bool = False) -> dict[str, Any]:
    """Write the exact calibration data of one set to `out`: text JSONL (doc id, offset, text per window),
    token ids (npy and JSONL) and a manifest with the set's lineage and the exported files' hashes.
    Files of the same names are replaced only with force; other files in `out` are left alone."""
    import numpy as np

    from calib_assets.calibration import load_calibration_set

    _check_member(model, [spec.name for spec in study.models], "model", study)
    _check_member(calib, study.calib_keys, "calibration partition", study)
    out = Path(out)
    directory = steps.calibration_dir(Path(root), model, calib)
    if not (directory / steps.MANIFEST).is_file():
        raise LineageError(f"calibration_set [{model}|{calib}] is not materialized yet (no manifest under "
                           f"{directory}); materialize it first")
    out = _check_out(out, force, Path(root))
    calibration = load_calibration_set(directory)  # checks the tokens against the manifest's fingerprint
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as error:
        raise LineageError(f"--out {str(out)!r} cannot be written: {error.strerror}") from error
    tmp.chmod(0o755)
    try:
        with open(tmp / "samples.jsonl", "w") as handle:
            for index, (doc_id, offset, text) in enumerate(zip(calibration.doc_ids, calibration.offsets,
                                                               calibration.texts)):
                handle.write(json.dumps({"index": index, "doc_id": doc_id, "offset": offset, "text": text}) + "\n")
        np.save(tmp / "token_ids.npy", calibration.token_ids)
        with open(tmp / "token_ids.jsonl", "w") as handle:
            for row in calibration.token_ids.tolist():
                handle.write(json.dumps(row) + "\n")
        chain = trace(study, root, f"{model}|{calib}")
        manifest = {"calibration_set": calibration.manifest,
                    "lineage": [{"asset": n.asset, "partition": n.partition, "fingerprint": n.fingerprint}
                                for n in chain],
                    "files": {name: sha256_files([tmp / name]) for name in EXPORT_FILES[:3]}}
        write_json(tmp / "manifest.json", manifest)
        _move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _check_member(value: str, allowed: list[str], what: str, study: Study) -> None:
    if value not in allowed:
        raise LineageError(f"unknown {what} {value!r} in study {study.name!r}; allowed: {_allowed(allowed)}")


def _check_out(out: Path, force: bool, root: Path) -> Path:
    """The resolved `out`; this export writes its own files into it and leaves any other file alone."""
    try:
        out = check_output_folder(out, protected=[root])
    except UnsafeOutput as error:
        raise LineageError(str(error)) from None
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LineageError(f"--out {str(out)!r} is not empty; choose an empty or new directory, or pass --force "
                           f"to replace {', '.join(EXPORT_FILES)} in it (other files are left alone)")
    return out


def _move_into(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    for name in EXPORT_FILES:
        os.replace(tmp / name, out / name)
