"""One partition's chain, read from the manifests on disk: [evaluation ->] checkpoint -> calibration set ->
pool -> corpus snapshot -> base model, with every link whose fingerprints disagree (stale lineage) named."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from calib_assets.artifacts import verify_contents
from calib_assets.naming import partition_key
from calib_assets.steps import (
    calibration_dir,
    checkpoint_dir,
    corpus_dir,
    evaluation_dir,
    model_dir,
    pool_dir,
    read_evaluation,
    rebuild_hint,
    stored_manifest,
)
from calib_assets.study import Study


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
    keys: dict[str, str]  # role (variant, baseline, calib, model, source) -> key


def _allowed(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys) - limit} more)" if len(keys) > limit else shown


def parse_target(study: Study, target: str) -> Target:
    """A partition key of any asset, as Dagster writes it (`calib|variant`, `calib|model`, `model|source`:
    `naming.partition_key`); the two parts of a multi-partition key are also accepted the other way round."""
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
                           f"CALIB|{parts[0]} with CALIB one of {_allowed(study.calib_keys)}")
    calib = study.calib_keys[0]
    examples = [partition_key(variant=study.variant_keys[0], calib=calib), partition_key(model=models[0], calib=calib),
                study.baseline_keys[0], partition_key(model=models[0], source=study.source_names[0]), models[0],
                study.source_names[0]]
    raise LineageError(
        f"{target!r} is not a partition of study {study.name!r}. Give CALIB|VARIANT (checkpoint, evaluation), "
        f"CALIB|MODEL (calibration set), MODEL|SOURCE (pool), a baseline, a model or a source, "
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
    manifest = stored_manifest(directory) or {}
    node = Node(asset, partition, manifest.get("fingerprint"), str(directory), details)
    if manifest:
        node.problems += [f"corrupt: {problem}; {rebuild_hint(asset, partition)}"
                          for problem in verify_contents(directory)]
    return node, manifest


def _evaluation_node(root: Path, variant: str, calib: str | None, metric: str | None, dataset: str | None) -> Node:
    directory = evaluation_dir(root, variant, calib)
    node, manifest = _node("evaluation" if calib else "baseline_eval",
                           partition_key(variant=variant, calib=calib), directory)
    if node.problems and (metric or dataset):
        raise LineageError(f"{node.asset} [{node.partition}]: {node.problems[0]}")
    if not node.materialized or node.problems:
        if metric or dataset:
            _not_materialized(node)
        return node
    table = read_evaluation(root, variant, calib)
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
    node, manifest = _node("compressed_model" if calib else "baseline_model",
                           partition_key(variant=variant, calib=calib),
                           checkpoint_dir(root, variant, calib))
    node.details = {key: manifest.get(key) for key in ("method_label", "size_bytes", "bits_per_param", "sparsity",
                                                          "compress_seconds", "calibration_fingerprint",
                                                          "base_fingerprint") if key in manifest}
    return node


def _calibration_chain(study: Study, root: Path, model: str, calib: str) -> list[Node]:
    node, manifest = _node("calibration_set", partition_key(model=model, calib=calib),
                           calibration_dir(root, model, calib))
    source = manifest.get("source") or study.parse_calib(calib)[0]
    if manifest:
        doc_ids = manifest.get("doc_ids", [])
        node.details = {"source": source, "seed": manifest.get("seed"), "shape": manifest.get("shape"),
                        "n_documents": len(set(doc_ids)), "doc_ids": doc_ids,
                        "pool_fingerprint": manifest.get("inputs", {}).get("pool_fingerprint")}
    return [node, _pool_node(root, model, source), _corpus_node(root, source)]


def _pool_node(root: Path, model: str, source: str) -> Node:
    node, manifest = _node("calibration_pool", partition_key(model=model, source=source), pool_dir(root, model, source))
    inputs = manifest.get("inputs", {})
    node.details = {key: value for key, value in {
        "documents": manifest.get("documents"), "tokens": manifest.get("tokens"),
        "corpus_fingerprint": inputs.get("corpus_fingerprint"),
        "base_fingerprint": inputs.get("model_fingerprint")}.items() if value is not None}
    return node


def _corpus_node(root: Path, source: str) -> Node:
    node, manifest = _node("text_corpus", source, corpus_dir(root, source))
    if manifest:
        node.details = {"documents": manifest.get("summary", {}).get("documents"),
                        "spec": manifest.get("inputs", {}).get("spec")}
    return node


def _base_node(root: Path, model: str) -> Node:
    node, manifest = _node("base_model", model, model_dir(root, model))
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
