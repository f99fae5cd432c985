"""Invariants of materialized artifacts, checked after each is written (the Dagster layer turns them into
blocking asset checks). Each function returns the list of problems found: empty means the check passed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from calib_assets import steps
from calib_assets.artifacts import CorruptArtifact
from calib_assets.calibration import load_calibration_set
from calib_assets.compression import load_checkpoint
from calib_assets.study import Study


def calibration_set_problems(study: Study, root: Path, model: str, calib: str) -> list[str]:
    """Shape, distinct documents, disjoint from the source's other sets, never any evaluation text."""
    source, seed = study.parse_calib(calib)
    size, seq_len = study.calib_size(calib), study.calibration.seq_len
    calibration_set = load_calibration_set(steps.calibration_dir(root, model, calib))
    problems = []
    if calibration_set.token_ids.shape != (size, seq_len):
        problems.append(f"shape {calibration_set.token_ids.shape} != ({size}, {seq_len})")
    documents = set(calibration_set.documents)
    packed = study.sampling_for(source).kind == "concat_chunk"  # a packed document may run across two rows
    if not packed and len(documents) != len(calibration_set.doc_ids):
        problems.append("a document gives more than one window")
    if calibration_set.effective_tokens is not None and min(calibration_set.effective_tokens) < 1:
        problems.append("a row holds no real token (only padding)")
    siblings = [key for key in study.calib_keys if key != calib and study.parse_calib(key)[0] == source
                and study.calib_size(key) == size]  # sets of one size are disjoint; sizes of a sweep may share
    for other_calib in siblings:
        other = steps.calibration_dir(root, model, other_calib)
        if (other / steps.MANIFEST).is_file():
            try:
                shared = documents & set(load_calibration_set(other).documents)
            except CorruptArtifact:  # that set's own step rebuilds it, and checks it against this one then
                continue
            if shared:
                problems.append(f"shares {len(shared)} documents with {other_calib}")
    for dataset in study.eval_datasets + study.extra_dataset_names:
        heldout = set(steps.load_corpus_split(root, dataset, "heldout")["doc_id"])
        if documents & heldout:
            problems.append(f"{len(documents & heldout)} documents are held-out evaluation text of {dataset}")
    return problems


def checkpoint_problems(study: Study, root: Path, variant: str, calib: str | None) -> list[str]:
    """Finite weights; at most 2^bits levels per quantization group; the configured sparsity pattern."""
    _, method = study.parse_variant(variant)
    compressed, _ = load_checkpoint(steps.checkpoint_dir(root, variant, calib))
    if method is None:
        raise ValueError(f"{variant!r} is a dense baseline: it has no method config to check against")
    config = method.config
    problems = []
    for name, layer in compressed.items():
        if not bool(layer.weight.isfinite().all()):
            problems.append(f"{name}: non-finite weights")
        if layer.packed_codes is not None:
            assert layer.bits is not None  # a result with codes has their bit width
            codes = layer.packed_codes.unpack().numpy()
            problems += [f"{name}: {p}" for p in _level_problems(codes, layer.bits)]
        if getattr(config, "target_sparsity", None) is not None:
            problems += [f"{name}: {p}" for p in _sparsity_problems(layer.weight.numpy(), config)]
    return problems


def _level_problems(codes: np.ndarray, bits: int) -> list[str]:
    """Codes that fit in `bits` bits: then every group (one grid of 2^bits levels) uses at most 2^bits levels,
    so counting each group's distinct codes as well could never fail (and took a minute per 135M model)."""
    if codes.max(initial=0) >= 2**bits:
        return [f"code {int(codes.max())} needs more than {bits} bits"]
    return []


def _sparsity_problems(weight: np.ndarray, config) -> list[str]:
    pruned = weight == 0
    if config.sparsity is None:  # n of every m consecutive inputs pruned, in every row
        per_group = pruned.reshape(weight.shape[0], -1, config.m).sum(axis=2)
        return [] if (per_group >= config.n).all() else [f"a group of {config.m} has fewer than {config.n} zeros"]
    share, floor = pruned.mean(), math.floor(config.sparsity * weight.shape[1]) / weight.shape[1]
    return [] if share >= floor - 1e-12 else [f"sparsity {share:.4f} < {config.sparsity}"]


def evaluation_problems(study: Study, table: pd.DataFrame) -> list[str]:
    """One finite value per evaluation dataset and metric."""
    expected = ({f"{dataset}-heldout" for dataset in study.eval_datasets} | set(study.extra_dataset_names)
                | {t.name for t in study.evaluation.tasks})
    problems = [f"missing {dataset}" for dataset in sorted(expected - set(table["eval_dataset"]))]
    bad = table[~table["value"].map(lambda v: isinstance(v, (float, int)) and math.isfinite(v))]
    problems += [f"{row.eval_dataset}/{row.metric} = {row.value}" for row in bad.itertuples()]
    return problems
