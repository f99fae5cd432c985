"""Calibration data: each source's documents tokenized into a pool, the calibration sets drawn from it
(the reference sampler, or the source's sampling and selection strategy), and each set's descriptors."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

from calib_assets.artifacts import temporary_prefix, write_json
from calib_assets.calibration import (
    build_calibration_set,
    check_capacity,
    load_calibration_set,
    load_token_pool,
    save_calibration_set,
    save_token_pool,
    tokenize_documents,
)
from calib_assets.calibration.calibset import calibration_set_from_samples
from calib_assets.calibration.descriptors import describe, inspection_markdown, word_ngram_set
from calib_assets.calibration.scoring import row_embeddings, row_perplexities
from calib_assets.calibration.strategies import (
    check_strategy_capacity,
    draw_mixture,
    draw_selected,
    eligible_count,
    pool_size,
)
from calib_assets.naming import partition_key
from calib_assets.sources import MixtureSource
from calib_assets.steps.inputs import (
    base_model_manifest,
    corpus_fingerprints,
    load_base_tokenizer,
    load_corpus_split,
    scoring_model,
)
from calib_assets.steps.layout import calibration_dir, corpus_dir, pool_dir, read_manifest, reuse_or_build, step_inputs
from calib_assets.study import Study, mixture_counts

DESCRIPTORS_FILE = "descriptors.json"
INSPECTION_SAMPLES = 5  # random samples of a set shown with their flags
FLAGS = ("short", "boilerplate", "non_english", "duplicate")  # descriptors' anomaly flags (n_<flag> per set)


# -- pool ----------------------------------------------------------------------------------------
def materialize_calibration_pool(study: Study, model_name: str, source_name: str, root: Path) -> dict[str, Any]:
    """The source's calibration documents tokenized by the model's tokenizer; fails early (before any
    calibration set or compression) when the source cannot give the study's disjoint sets."""
    model_manifest = base_model_manifest(root, model_name)
    corpus_manifest = read_manifest(corpus_dir(root, source_name), "text_corpus", source_name)
    spec = study.calibration
    directory = pool_dir(root, model_name, source_name)
    inputs, inputs_hash = step_inputs("calibration_pool", model_fingerprint=model_manifest["fingerprint"],
                                      corpus_fingerprint=corpus_manifest["fingerprint"])

    def build() -> dict[str, Any]:
        tokenizer = load_base_tokenizer(study, root, model_name)
        corpus = load_corpus_split(root, source_name, "calibration")
        documents = tokenize_documents(dict(zip(corpus["doc_id"], corpus["text"])), tokenizer)
        return save_token_pool(documents, directory, model=model_name, source=source_name, inputs=inputs,
                               inputs_hash=inputs_hash)

    manifest = reuse_or_build(f"calibration_pool [{model_name}|{source_name}]", directory, inputs_hash, build)
    lengths = manifest["token_lengths"]
    sampling = study.sampling_for(source_name)
    if study.uses_reference_sampler(source_name):
        eligible = sum(length >= spec.seq_len for length in lengths.values())
        check_capacity(eligible, source=source_name, seq_len=spec.seq_len, n_samples=max(spec.sizes), seeds=spec.seeds)
    else:
        eligible = eligible_count(lengths, sampling, spec.seq_len)
        check_pool_capacity(study, root, source_name, lengths)
    return {**manifest, "eligible_documents": eligible}


def check_pool_capacity(study: Study, root: Path, source_name: str, lengths: dict[str, int]) -> None:
    """The source's strategy can give every seed's disjoint set (or candidate pool) before any is drawn."""
    spec, source = study.calibration, study.source(source_name)
    sampling, selection = study.sampling_for(source_name), study.selection_for(source_name)
    if not isinstance(source, MixtureSource):
        check_strategy_capacity(lengths, sampling, source=source_name, seq_len=spec.seq_len,
                                n_samples=pool_size(selection, max(spec.sizes)), seeds=spec.seeds)
        return
    counts = mixture_counts([c.weight for c in source.components], max(spec.sizes))
    seen: set[str] = set()
    for component, count in zip(source.components, counts):
        own = set(load_corpus_split(root, component.source, "calibration")["doc_id"]) - seen
        seen |= own
        check_strategy_capacity({d: n for d, n in lengths.items() if d in own}, sampling,
                                source=f"{source_name}[{component.source}]", seq_len=spec.seq_len,
                                n_samples=pool_size(selection, count), seeds=spec.seeds)


# -- set -----------------------------------------------------------------------------------------
def materialize_calibration_set(study: Study, model_name: str, calib: str, root: Path) -> dict[str, Any]:
    """Draw the set (reference sampler, or the source's sampling/selection strategy), then its descriptors."""
    source_name, seed = study.parse_calib(calib)
    pool_manifest = read_manifest(pool_dir(root, model_name, source_name), "calibration_pool",
                                  f"{model_name}|{source_name}")
    spec, n_samples = study.calibration, study.calib_size(calib)
    sampling, selection = study.sampling_for(source_name), study.selection_for(source_name)
    reference = study.uses_reference_sampler(source_name)
    # the reference sampler keeps its original inputs, so that existing sets stay valid and identical
    strategy = {} if reference else {"sampling": sampling.model_dump(),
                                     "selection": selection.model_dump() if selection else None,
                                     "mixture": _mixture_inputs(study, source_name)}
    directory = calibration_dir(root, model_name, calib)
    inputs, inputs_hash = step_inputs("calibration_set", pool_fingerprint=pool_manifest["fingerprint"], seed=seed,
                                      n_samples=n_samples, seq_len=spec.seq_len, sampler_seed=spec.sampler_seed,
                                      **strategy)

    def build() -> dict[str, Any]:
        tokenizer = load_base_tokenizer(study, root, model_name)
        documents = load_token_pool(pool_dir(root, model_name, source_name))
        if reference:
            calibration_set = build_calibration_set(
                documents, tokenizer, source=source_name, seq_len=spec.seq_len, n_samples=n_samples,
                seed=seed, sampler_seed=spec.sampler_seed)
        else:
            calibration_set = _strategy_set(study, root, model_name, source_name, seed, n_samples, documents,
                                            tokenizer)
        return save_calibration_set(calibration_set, directory, model=model_name, calib=calib,
                                    inputs=inputs, inputs_hash=inputs_hash)

    manifest = reuse_or_build(f"calibration_set [{partition_key(model=model_name, calib=calib)}]", directory,
                              inputs_hash, build)
    if spec.descriptors:
        manifest = {**manifest, "descriptors": materialize_descriptors(study, model_name, calib, root)["set"]}
    return manifest


def _strategy_set(study: Study, root: Path, model_name: str, source_name: str, seed: int, n_samples: int,
                  documents, tokenizer):
    spec, source = study.calibration, study.source(source_name)
    sampling, selection = study.sampling_for(source_name), study.selection_for(source_name)
    eos = tokenizer.eos_token_id
    common = dict(seq_len=spec.seq_len, sampler_seed=spec.sampler_seed, source=source_name,
                  pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0), eos_id=eos,
                  measure=_selection_measure(study, root, model_name))
    if isinstance(source, MixtureSource):
        counts = mixture_counts([c.weight for c in source.components], n_samples)
        components = [_component_documents(root, c.source, documents) for c in source.components]
        samples, provenance = draw_mixture(components, counts, sampling, selection, seed=seed, **common)
    else:
        samples, provenance = draw_selected(documents, sampling, selection, n_samples=n_samples, seed=seed,
                                            **common)
    manifest = {"source": source_name, "seq_len": spec.seq_len, "n_samples": n_samples, "seed": seed,
                "sampler_seed": spec.sampler_seed, "sampling": sampling.model_dump(),
                "selection": selection.model_dump() if selection else None, "selection_provenance": provenance}
    return calibration_set_from_samples(samples, tokenizer, manifest)


def _component_documents(root: Path, component: str, documents: dict[str, list[int]]) -> dict[str, list[int]]:
    """The mixture pool's documents that come from one component source (by the component's corpus)."""
    own = set(load_corpus_split(root, component, "calibration")["doc_id"])
    return {doc_id: ids for doc_id, ids in documents.items() if doc_id in own}


def _mixture_inputs(study: Study, source_name: str) -> list | None:
    source = study.source(source_name)
    return [c.model_dump() for c in source.components] if isinstance(source, MixtureSource) else None


def _selection_measure(study: Study, root: Path, model_name: str):
    """measure(selection, candidates) for model-based selections: loads the base model on first use."""
    loaded: dict[str, Any] = {}

    def measure(selection, candidates) -> dict[str, Any]:
        if selection.kind not in ("least_perplexity", "activation_kmeans"):
            return {}
        if "model" not in loaded:
            loaded["model"], loaded["device"], loaded["dtype"] = scoring_model(study, root, model_name)
        rows = [c.token_ids for c in candidates]
        lengths = [c.effective_tokens for c in candidates]
        options = dict(lengths=lengths, batch_size=study.compute.batch_size, device=loaded["device"])
        if selection.kind == "least_perplexity":
            return {"perplexities": row_perplexities(loaded["model"], rows, **options)}
        return {"embeddings": row_embeddings(loaded["model"], rows, layer=selection.layer, **options)}

    return measure


def calibration_manifest(root: Path, model_name: str, calib: str) -> dict[str, Any]:
    return read_manifest(calibration_dir(root, model_name, calib), "calibration_set",
                         partition_key(model=model_name, calib=calib))


# -- descriptors ---------------------------------------------------------------------------------
def materialize_descriptors(study: Study, model_name: str, calib: str, root: Path) -> dict[str, Any]:
    """descriptors.json of a calibration set (recomputed only when the set, model or evaluation text change)."""
    directory = calibration_dir(root, model_name, calib)
    calibration_set = load_calibration_set(directory)
    corpora = corpus_fingerprints(root, study.eval_datasets)
    _, inputs_hash = step_inputs("set_descriptors", set_fingerprint=calibration_set.fingerprint,
                                 model_fingerprint=base_model_manifest(root, model_name)["fingerprint"],
                                 corpora=corpora, compute=study.compute.model_dump(exclude={"batch_size"}))

    def build() -> dict[str, Any]:
        model, device, dtype = scoring_model(study, root, model_name)
        lengths = calibration_set.row_lengths
        perplexities = row_perplexities(model, calibration_set.token_ids.tolist(), lengths=lengths,
                                        batch_size=study.compute.batch_size, device=device)
        eval_texts = [text for name in study.eval_datasets
                      for text in load_corpus_split(root, name, "heldout")["text"]]
        descriptors = describe(calibration_set.token_ids.tolist(), calibration_set.texts, effective_tokens=lengths,
                               perplexities=perplexities, eval_grams=word_ngram_set(eval_texts))
        descriptors.update(inputs_hash=inputs_hash, model=model_name, calib=calib,
                           fingerprint=calibration_set.fingerprint, forward_dtype=str(dtype))
        path = directory / DESCRIPTORS_FILE
        temporary = path.with_name(temporary_prefix(DESCRIPTORS_FILE))
        write_json(temporary, descriptors)
        os.replace(temporary, path)
        return descriptors

    return reuse_or_build(f"set_descriptors [{partition_key(model=model_name, calib=calib)}]", directory,
                          inputs_hash, build, side_record=DESCRIPTORS_FILE)


def flagged_samples(descriptors_set: dict[str, Any]) -> int:
    """How many samples of a set carry an anomaly flag (a sample with two flags counts twice)."""
    return sum(descriptors_set.get(f"n_{flag}", 0) or 0 for flag in FLAGS)


def inspection_seed(calib: str) -> int:
    """The seed that picks a set's shown samples: its own per partition, the same on every run."""
    return zlib.crc32(calib.encode())


def inspect_calibration_set(study: Study, model_name: str, calib: str, root: Path, *,
                            n_show: int = INSPECTION_SAMPLES, seed: int | None = None) -> dict[str, Any]:
    """Markdown of random samples with their flags, and the set descriptors (computed if missing);
    `seed` None: inspection_seed(calib)."""
    calibration_set = load_calibration_set(calibration_dir(root, model_name, calib))
    descriptors = materialize_descriptors(study, model_name, calib, root)
    seed = inspection_seed(calib) if seed is None else seed
    return {"fingerprint": calibration_set.fingerprint, "descriptors": descriptors["set"],
            "flagged": flagged_samples(descriptors["set"]),
            "markdown": inspection_markdown(calibration_set.texts, descriptors, n_show=n_show, seed=seed)}
