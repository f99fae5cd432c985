"""The pipeline's steps as plain functions: each reads its inputs from the artifact root, calls the
library, writes one artifact atomically and returns its manifest. The Dagster assets are thin wrappers.

Every artifact records the fingerprint of its inputs; when the artifact on disk was built from exactly
the same inputs, a step reuses it instead of recomputing (so re-running a study only does new work).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from calib_assets import __version__
from calib_assets.artifacts import (atomic_dir, check_contents, read_json, sha256_bytes, sha256_json, temporary_prefix,
                                    verify_contents, write_json)
from calib_assets.study import DENSE, Study

CODE_VERSIONS = {
    "base_model": "1",
    "text_corpus": "1",
    "calibration_pool": "1",
    "calibration_set": "2",  # 2: the fingerprint covers the exported text, doc ids and offsets too
    "calibration_descriptors": "1",
    # compressed_model 2: SpQR quantized statistics, transposed OBS column loop; 3: bf16 attention by query
    # blocks; 4: Hessians of bf16 inputs on the CPU's bf16 units (fp32 sums in another order)
    "compressed_model": "4",
    "offline_tasks": "1",
    "evaluation": "3",  # 3: task rows carry lm-eval's stderr
    "eval_results": "1",
}
MANIFEST = "manifest.json"
BOOTSTRAP_ITERS = 1000  # lm-eval's draws for the stderr of bootstrapped task metrics (the cloze perplexity)


# -- layout: deterministic paths from asset + partition -------------------------------------------
def model_dir(root: Path, model: str) -> Path:
    return root / "models" / model


def corpus_dir(root: Path, source: str) -> Path:
    return root / "corpora" / source


def pool_dir(root: Path, model: str, source: str) -> Path:
    return root / "calibration-pools" / model / source


def calibration_dir(root: Path, model: str, calib: str) -> Path:
    return root / "calibration" / model / calib


def checkpoint_dir(root: Path, variant: str, calib: str | None = None) -> Path:
    return root / "checkpoints" / variant / (calib or "no-calibration")


def evaluation_dir(root: Path, variant: str, calib: str | None = None) -> Path:
    return root / "evaluations" / variant / (calib or "no-calibration")


def warehouse_path(root: Path) -> Path:
    return root / "warehouse.duckdb"


# -- reuse ---------------------------------------------------------------------------------------
def _reusable(directory: Path, inputs_hash: str, what: str, log: Callable[[str], None] = print
              ) -> dict[str, Any] | None:
    """The artifact's manifest when it was built from exactly these inputs and its files still match their
    seal; else None (the caller rebuilds it), saying why when an artifact was there."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None
    problems = verify_contents(directory)
    if problems:
        log(f"{what}: rebuilding it, its files do not match what was written: {'; '.join(problems)}")
        return None
    manifest = read_json(manifest_path)
    return {**manifest, "reused": True} if manifest.get("inputs_hash") == inputs_hash else None


def _inputs(step: str, **inputs: Any) -> tuple[dict[str, Any], str]:
    inputs = {"step": step, "code_version": CODE_VERSIONS[step], **inputs}
    return inputs, sha256_json(inputs)


# -- base model ----------------------------------------------------------------------------------
def materialize_base_model(study: Study, model_name: str, root: Path) -> dict[str, Any]:
    from calib_assets.models import context_length, prepare_model_folder, weights_fingerprint

    spec = study.model(model_name)
    folder = prepare_model_folder(spec, root / "model-cache")
    context = context_length(folder)
    if context is not None:
        study.check_context_length(model_name, context)  # hub and local models: known only from their config
    manifest = {"model": model_name, "spec": spec.model_dump(), "folder": str(folder),
                "fingerprint": weights_fingerprint(folder), "code_version": CODE_VERSIONS["base_model"]}
    existing = model_dir(root, model_name) / MANIFEST
    if existing.is_file() and not verify_contents(existing.parent) and read_json(existing) == manifest:
        return {**manifest, "reused": True}
    with atomic_dir(model_dir(root, model_name)) as tmp:
        write_json(tmp / MANIFEST, manifest)
    return manifest


def base_model_manifest(root: Path, model_name: str) -> dict[str, Any]:
    return _read_manifest(model_dir(root, model_name), "base_model", model_name)


def _load_base(study: Study, root: Path, model_name: str, device: str = "cpu", dtype: str = "float32"):
    """The base model for a heavy step (compression, evaluation, scoring), the allocator tuned for it."""
    import torch

    from calib_assets.compute import reuse_freed_memory
    from calib_assets.models import load_model, trust_remote_code

    reuse_freed_memory()

    manifest = base_model_manifest(root, model_name)
    model, tokenizer = load_model(Path(manifest["folder"]), dtype=getattr(torch, dtype), device=device,
                                  trust_remote_code=trust_remote_code(study.model(model_name)))
    return model, tokenizer, manifest


# -- text corpus ---------------------------------------------------------------------------------
def materialize_corpus(study: Study, source_name: str, root: Path) -> dict[str, Any]:
    from calib_assets.sources import build_corpus, save_corpus

    spec = study.source(source_name)
    directory = corpus_dir(root, source_name)
    inputs, inputs_hash = _inputs("text_corpus", spec=spec.corpus_dump(), **_split_of(study, source_name),
                                  **derived_corpus_inputs(study, spec, root))
    if reused := _reusable(directory, inputs_hash, f"text_corpus [{source_name}]"):
        return reused
    corpus = build_source_corpus(study, spec, root)
    return save_corpus(corpus, directory, source=source_name, inputs=inputs, inputs_hash=inputs_hash)


GENERATED_MIN_CHARS = 20
TASK_MIN_CHARS = 20  # zero-shot task examples are often one short line


def derived_corpus_inputs(study: Study, spec, root: Path) -> dict[str, Any]:
    """What a mixture or generated corpus is built from (materializing those inputs first); {} otherwise."""
    from calib_assets.sources import GeneratedSource, MixtureSource

    if isinstance(spec, MixtureSource):
        return {"components": {c.source: materialize_corpus(study, c.source, root)["fingerprint"]
                               for c in spec.components}}
    if isinstance(spec, GeneratedSource):
        prefix = materialize_corpus(study, spec.prefix_source, root)["fingerprint"] if spec.prefix_source else None
        return {"model_fingerprint": materialize_base_model(study, spec.model, root)["fingerprint"],
                "prefix_corpus": prefix}
    return {}


def _split_of(study: Study, source_name: str) -> dict[str, Any]:
    """Evaluation-only text is held out whole, short paragraphs included (WikiText-style)."""
    if source_name in study.extra_dataset_names:
        return {"heldout_fraction": 1.0, "min_chars": 1}
    return {"heldout_fraction": study.calibration.heldout_fraction}


def build_source_corpus(study: Study, spec, root: Path) -> pd.DataFrame:
    """The corpus of any source: read (embedded, huggingface, local), joined (mixture) or generated."""
    from calib_assets.sources import GeneratedSource, MixtureSource, TaskSource, build_corpus, corpus_from_texts

    if spec.label in study.extra_dataset_names:
        return build_corpus(spec, **_split_of(study, spec.label))
    fraction = study.calibration.heldout_fraction
    if isinstance(spec, MixtureSource):
        frames = [load_corpus_split(root, c.source, None) for c in spec.components]
        texts = [(f"{c.source}:{origin}", text) for c, frame in zip(spec.components, frames)
                 for origin, text in zip(frame["origin"], frame["text"])]
        return corpus_from_texts(spec.label, texts, heldout_fraction=fraction)
    if isinstance(spec, GeneratedSource):
        return corpus_from_texts(spec.label, _generated_texts(study, spec, root), heldout_fraction=fraction,
                                 min_chars=GENERATED_MIN_CHARS)
    if isinstance(spec, TaskSource):
        return build_corpus(spec, heldout_fraction=fraction, min_chars=TASK_MIN_CHARS)
    return build_corpus(spec, heldout_fraction=fraction)


def _generated_texts(study: Study, spec, root: Path) -> list[tuple[str, str]]:
    from calib_assets.calibration.generation import self_generate

    model, device, dtype = _scoring_model(study, root, spec.model)
    tokenizer = _load_base_tokenizer(study, root, spec.model)
    prefixes = None
    if spec.prefix_source:  # prefixes only from calibration documents: never held-out evaluation text
        texts = load_corpus_split(root, spec.prefix_source, "calibration")["text"].tolist()
        prefixes = tokenizer(texts, add_special_tokens=False)["input_ids"]
    generations, _ = self_generate(
        model, tokenizer, n_documents=spec.n_documents, max_new_tokens=spec.max_new_tokens, prefixes=prefixes,
        prefix_tokens=spec.prefix_tokens, temperature=spec.temperature, top_p=spec.top_p, seed=spec.seed,
        max_perplexity=spec.max_perplexity, keep_fraction=spec.keep_fraction, batch_size=spec.batch_size,
        device=device)
    return [(f"generated:{i}:ppl={g.perplexity:.2f}", g.text) for i, g in enumerate(generations)]


def _load_base_tokenizer(study: Study, root: Path, model_name: str):
    from transformers import AutoTokenizer

    from calib_assets.models import trust_remote_code

    return AutoTokenizer.from_pretrained(base_model_manifest(root, model_name)["folder"],
                                         trust_remote_code=trust_remote_code(study.model(model_name)))


def _corpus_fingerprints(root: Path, names: list[str]) -> dict[str, str]:
    return {name: _read_manifest(corpus_dir(root, name), "text_corpus", name)["fingerprint"] for name in names}


def load_corpus_split(root: Path, source_name: str, split: str | None) -> pd.DataFrame:
    """One split of a source's corpus (None: all of it)."""
    from calib_assets.sources import load_corpus

    corpus = load_corpus(corpus_dir(root, source_name))
    return corpus if split is None else corpus[corpus["split"] == split]


# -- calibration set -----------------------------------------------------------------------------
def materialize_calibration_pool(study: Study, model_name: str, source_name: str, root: Path) -> dict[str, Any]:
    """The source's calibration documents tokenized by the model's tokenizer; fails early (before any
    calibration set or compression) when the source cannot give the study's disjoint sets."""
    from calib_assets.calibration import check_capacity, save_token_pool, tokenize_documents
    from calib_assets.calibration.strategies import eligible_count

    model_manifest = base_model_manifest(root, model_name)
    corpus_manifest = _read_manifest(corpus_dir(root, source_name), "text_corpus", source_name)
    spec = study.calibration
    directory = pool_dir(root, model_name, source_name)
    inputs, inputs_hash = _inputs("calibration_pool", model_fingerprint=model_manifest["fingerprint"],
                                  corpus_fingerprint=corpus_manifest["fingerprint"])
    if not (reused := _reusable(directory, inputs_hash, f"calibration_pool [{model_name}|{source_name}]")):
        tokenizer = _load_base_tokenizer(study, root, model_name)
        corpus = load_corpus_split(root, source_name, "calibration")
        documents = tokenize_documents(dict(zip(corpus["doc_id"], corpus["text"])), tokenizer)
        reused = save_token_pool(documents, directory, model=model_name, source=source_name, inputs=inputs,
                                 inputs_hash=inputs_hash)
    lengths = reused["token_lengths"]
    sampling = study.sampling_for(source_name)
    if study.uses_reference_sampler(source_name):
        eligible = sum(length >= spec.seq_len for length in lengths.values())
        check_capacity(eligible, source=source_name, seq_len=spec.seq_len, n_samples=max(spec.sizes), seeds=spec.seeds)
    else:
        eligible = eligible_count(lengths, sampling, spec.seq_len)
        check_pool_capacity(study, root, source_name, lengths)
    return {**reused, "eligible_documents": eligible}


def materialize_calibration_set(study: Study, model_name: str, calib: str, root: Path) -> dict[str, Any]:
    """Draw the set (reference sampler, or the source's sampling/selection strategy), then its descriptors."""
    from calib_assets.calibration import build_calibration_set, load_token_pool, save_calibration_set

    source_name, seed = study.parse_calib(calib)
    pool_manifest = _read_manifest(pool_dir(root, model_name, source_name), "calibration_pool",
                                   f"{model_name}|{source_name}")
    spec, n_samples = study.calibration, study.calib_size(calib)
    sampling, selection = study.sampling_for(source_name), study.selection_for(source_name)
    reference = study.uses_reference_sampler(source_name)
    # the reference sampler keeps its original inputs, so that existing sets stay valid and identical
    strategy = {} if reference else {"sampling": sampling.model_dump(),
                                     "selection": selection.model_dump() if selection else None,
                                     "mixture": _mixture_inputs(study, source_name)}
    directory = calibration_dir(root, model_name, calib)
    inputs, inputs_hash = _inputs("calibration_set", pool_fingerprint=pool_manifest["fingerprint"], seed=seed,
                                  n_samples=n_samples, seq_len=spec.seq_len, sampler_seed=spec.sampler_seed,
                                  **strategy)
    if not (manifest := _reusable(directory, inputs_hash, f"calibration_set [{model_name}|{calib}]")):
        tokenizer = _load_base_tokenizer(study, root, model_name)
        documents = load_token_pool(pool_dir(root, model_name, source_name))
        if reference:
            calibration_set = build_calibration_set(
                documents, tokenizer, source=source_name, seq_len=spec.seq_len, n_samples=n_samples,
                seed=seed, sampler_seed=spec.sampler_seed)
        else:
            calibration_set = _strategy_set(study, root, model_name, source_name, seed, n_samples, documents,
                                            tokenizer)
        manifest = save_calibration_set(calibration_set, directory, model=model_name, calib=calib,
                                        inputs=inputs, inputs_hash=inputs_hash)
    if spec.descriptors:
        manifest = {**manifest, "descriptors": materialize_descriptors(study, model_name, calib, root)["set"]}
    return manifest


def _strategy_set(study: Study, root: Path, model_name: str, source_name: str, seed: int, n_samples: int,
                  documents, tokenizer):
    from calib_assets.calibration.calibset import calibration_set_from_samples
    from calib_assets.calibration.strategies import draw_mixture, draw_selected
    from calib_assets.sources import MixtureSource
    from calib_assets.study import mixture_counts

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
    from calib_assets.sources import MixtureSource

    source = study.source(source_name)
    return [c.model_dump() for c in source.components] if isinstance(source, MixtureSource) else None


def _selection_measure(study: Study, root: Path, model_name: str):
    """measure(selection, candidates) for model-based selections: loads the base model on first use."""
    loaded: dict[str, Any] = {}

    def measure(selection, candidates) -> dict[str, Any]:
        from calib_assets.calibration.scoring import row_embeddings, row_perplexities

        if selection.kind not in ("least_perplexity", "activation_kmeans"):
            return {}
        if "model" not in loaded:
            loaded["model"], loaded["device"], loaded["dtype"] = _scoring_model(study, root, model_name)
        rows = [c.token_ids for c in candidates]
        lengths = [c.effective_tokens for c in candidates]
        options = dict(lengths=lengths, batch_size=study.compute.batch_size, device=loaded["device"])
        if selection.kind == "least_perplexity":
            return {"perplexities": row_perplexities(loaded["model"], rows, **options)}
        return {"embeddings": row_embeddings(loaded["model"], rows, layer=selection.layer, **options)}

    return measure


def _scoring_model(study: Study, root: Path, model_name: str):
    """The base model for forward passes that only score data (bf16 where the hardware has it)."""
    from calib_assets.compute import resolve_device, resolve_forward_dtype

    device = resolve_device(study.compute.device)
    dtype = resolve_forward_dtype(study.compute.forward_dtype, device)
    model, _, _ = _load_base(study, root, model_name, device=device)
    return model.to(dtype=dtype), device, dtype


def check_pool_capacity(study: Study, root: Path, source_name: str, lengths: dict[str, int]) -> None:
    """The source's strategy can give every seed's disjoint set (or candidate pool) before any is drawn."""
    from calib_assets.calibration.strategies import check_strategy_capacity, pool_size
    from calib_assets.sources import MixtureSource
    from calib_assets.study import mixture_counts

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


# -- calibration descriptors ---------------------------------------------------------------------
DESCRIPTORS_FILE = "descriptors.json"


def materialize_descriptors(study: Study, model_name: str, calib: str, root: Path) -> dict[str, Any]:
    """descriptors.json of a calibration set (recomputed only when the set, model or evaluation text change)."""
    import os

    from calib_assets.calibration import load_calibration_set
    from calib_assets.calibration.descriptors import describe, word_ngram_set
    from calib_assets.calibration.scoring import row_perplexities

    directory = calibration_dir(root, model_name, calib)
    calibration_set = load_calibration_set(directory)
    corpora = _corpus_fingerprints(root, study.eval_datasets)
    _, inputs_hash = _inputs("calibration_descriptors", set_fingerprint=calibration_set.fingerprint,
                             model_fingerprint=base_model_manifest(root, model_name)["fingerprint"], corpora=corpora,
                             compute=study.compute.model_dump(exclude={"batch_size"}))
    path = directory / DESCRIPTORS_FILE
    if path.is_file() and (existing := read_json(path)).get("inputs_hash") == inputs_hash:
        return existing
    model, device, dtype = _scoring_model(study, root, model_name)
    lengths = calibration_set.row_lengths
    perplexities = row_perplexities(model, calibration_set.token_ids.tolist(), lengths=lengths,
                                    batch_size=study.compute.batch_size, device=device)
    eval_texts = [text for name in study.eval_datasets for text in load_corpus_split(root, name, "heldout")["text"]]
    descriptors = describe(calibration_set.token_ids.tolist(), calibration_set.texts, effective_tokens=lengths,
                           perplexities=perplexities, eval_grams=word_ngram_set(eval_texts))
    descriptors.update(inputs_hash=inputs_hash, model=model_name, calib=calib,
                       fingerprint=calibration_set.fingerprint, forward_dtype=str(dtype))
    temporary = path.with_name(temporary_prefix(DESCRIPTORS_FILE))
    write_json(temporary, descriptors)
    os.replace(temporary, path)
    return descriptors


def calibration_manifest(root: Path, model_name: str, calib: str) -> dict[str, Any]:
    return _read_manifest(calibration_dir(root, model_name, calib), "calibration_set", f"{model_name}|{calib}")


# -- compression ---------------------------------------------------------------------------------
def materialize_checkpoint(study: Study, variant: str, calib: str | None, root: Path, *, device: str,
                           forward_dtype, log=print) -> dict[str, Any]:
    """Compress the base model with the variant's method (on calibration set `calib` if it needs one)."""
    from calib_assets.calibration import load_calibration_set
    from calib_assets.compression import compress_model, save_checkpoint

    model_spec, method = study.parse_variant(variant)
    if method is None:
        raise ValueError(f"variant {variant!r} is the dense model: it has no checkpoint")
    if method.needs_calibration != (calib is not None):
        raise ValueError(f"method {method.label!r} {'needs' if method.needs_calibration else 'takes no'} "
                         f"calibration set (got {calib!r})")
    base = base_model_manifest(root, model_spec.name)
    calibration = calibration_manifest(root, model_spec.name, calib) if calib else None
    directory = checkpoint_dir(root, variant, calib)
    inputs, inputs_hash = _inputs(
        "compressed_model", base_fingerprint=base["fingerprint"], method=method.config.to_dict(),
        calibration_fingerprint=calibration["fingerprint"] if calibration else None,
        forward_dtype=str(forward_dtype), batch_size=study.compute.batch_size, **_held_in(study))
    if reused := _reusable(directory, inputs_hash, f"compressed_model [{variant}|{calib}]", log):
        return reused
    model, _, _ = _load_base(study, root, model_spec.name, dtype=study.compute.model_dtype)
    ids = load_calibration_set(calibration_dir(root, model_spec.name, calib)).input_ids() if calib else None
    started = time.perf_counter()
    compressed = compress_model(model, ids, method.config, device=device, forward_dtype=forward_dtype,
                                batch_size=study.compute.batch_size,
                                progress=lambda done, total, layer: log(f"compressed {layer} ({done}/{total})"))
    seconds = time.perf_counter() - started
    return save_checkpoint(directory, compressed, {
        "variant": variant, "calib": calib, "model": model_spec.name, "method": method.config.to_dict(),
        "method_label": method.label, "base_fingerprint": base["fingerprint"],
        "calibration_fingerprint": calibration["fingerprint"] if calibration else None,
        "inputs": inputs, "inputs_hash": inputs_hash, "compress_seconds": round(seconds, 2),
        "device": device, "forward_dtype": str(forward_dtype), "library_version": __version__})


def _held_in(study: Study) -> dict[str, str]:
    """The model's dtype during compression, as an input of the checkpoint; left out at the default
    (float32), so that checkpoints made before the option existed are still reused."""
    dtype = study.compute.model_dtype
    return {} if dtype == "float32" else {"model_dtype": dtype}


def variant_manifest(study: Study, variant: str, calib: str | None, root: Path) -> dict[str, Any]:
    """What a variant's weights are: the base model's manifest (dense) or the checkpoint's."""
    model_spec, method = study.parse_variant(variant)
    base = base_model_manifest(root, model_spec.name)
    if method is None:
        return {"fingerprint": base["fingerprint"], "base_fingerprint": base["fingerprint"]}
    directory = checkpoint_dir(root, variant, calib)
    manifest = _read_manifest(directory, "compressed_model", f"{variant}|{calib}")
    if manifest["base_fingerprint"] != base["fingerprint"]:
        raise ValueError(f"checkpoint {str(directory)!r} was built from another base model "
                         f"({manifest['base_fingerprint'][:12]} != {base['fingerprint'][:12]}): re-materialize it")
    return manifest


def load_variant_model(study: Study, variant: str, calib: str | None, root: Path, device: str = "cpu"):
    """The dense base model, or the base model with the variant's checkpoint applied."""
    from calib_assets.compression import apply_checkpoint

    model_spec, method = study.parse_variant(variant)
    manifest = variant_manifest(study, variant, calib, root)
    model, tokenizer, _ = _load_base(study, root, model_spec.name, device=device)
    if method is not None:
        apply_checkpoint(model, checkpoint_dir(root, variant, calib))
    return model, tokenizer, manifest


def export_variant_model(study: Study, variant: str, calib: str | None, root: Path, out: Path, *,
                         dtype: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """A plain Hugging Face folder of a compressed variant (weights as the method produced them)."""
    from calib_assets.compression import export_hf_folder
    from calib_assets.models import trust_remote_code

    model_spec, method = study.parse_variant(variant)
    base_folder = base_model_manifest(root, model_spec.name)["folder"]
    if method is None:
        raise ValueError(f"{variant!r} is the dense model: its folder is {base_folder!r}")
    variant_manifest(study, variant, calib, root)  # materialized, and from this study's base model
    return export_hf_folder(checkpoint_dir(root, variant, calib), Path(base_folder), out, dtype=dtype,
                            overwrite=overwrite, trust_remote_code=trust_remote_code(model_spec),
                            protected=(Path(root),), overwrite_flag="--force")


# -- evaluation ----------------------------------------------------------------------------------
EVAL_COLUMNS = [
    "model", "method", "method_config", "variant", "calib", "calibration_source", "seed", "n_samples",
    "calibration_fingerprint", "checkpoint_fingerprint", "eval_dataset", "metric", "value", "stderr",
    "token_count", "n_examples", "code_version", "run_id", "evaluated_at",
]
RESULTS_FILE, CORRECT_FILE = "results.parquet", "correct.parquet"


def tasks_dir(root: Path, task: str) -> Path:
    return root / "tasks" / task


def materialize_offline_tasks(study: Study, root: Path) -> dict[str, Any]:
    """Build the study's offline tasks from held-out text only, and prove it (check_heldout_only)."""
    from calib_assets.evaluation import build_cloze_task, build_next_sentence_task, check_heldout_only
    from calib_assets.evaluation import read_task_manifest, write_lm_eval_task
    from calib_assets.sources import load_corpus

    check_task_data_files(study)
    corpora = _corpus_fingerprints(root, study.eval_datasets)
    corpus = pd.concat([load_corpus(corpus_dir(root, name)) for name in study.eval_datasets], ignore_index=True)
    builders = {"cloze": build_cloze_task, "next_sentence": build_next_sentence_task}
    manifests, built_any = {}, False
    for task in study.offline_tasks:
        directory = tasks_dir(root, task.name)
        inputs, inputs_hash = _inputs("offline_tasks", corpora=corpora, task=task.model_dump())
        reused = _reusable(directory, inputs_hash, f"offline_tasks [{task.name}]")
        if reused is None:
            built_any = True
            built = builders[task.kind](corpus, n_examples=task.n_examples, seed=task.seed, **task.builder_options())
            built.manifest.update(inputs=inputs, inputs_hash=inputs_hash)
            write_lm_eval_task(built, directory, task.name)
            reused = read_task_manifest(directory)
        check_heldout_only(reused, corpus)
        manifests[task.name] = reused
    fingerprint = sha256_json({name: m["examples_fingerprint"] for name, m in manifests.items()})
    return {"fingerprint": fingerprint, "tasks": {name: len(m["doc_ids"]) for name, m in manifests.items()},
            "reused": not built_any}


def check_task_data_files(study: Study) -> None:
    """Local task files must exist before any model is compressed for a study that scores them."""
    for task in study.lm_eval_tasks:
        files = [task.data_files] if isinstance(task.data_files, str) else task.data_files or []
        missing = [file for file in files if not Path(file).expanduser().is_file()]
        if missing:
            raise FileNotFoundError(f"task {task.name!r}: data_files {missing} do not exist (paths are relative to "
                                    f"{str(Path.cwd())!r}); give existing JSON/JSONL files in the task's schema")


def task_specs(study: Study, root: Path) -> list:
    from calib_assets.evaluation import TaskSpec

    specs = [TaskSpec(name=task.name, include_path=str(tasks_dir(root, task.name))) for task in study.offline_tasks]
    return specs + [TaskSpec(name=task.name, data_files=task.data_files) for task in study.lm_eval_tasks]


def evaluate_variant(study: Study, variant: str, calib: str | None, root: Path, *, device: str,
                     forward_dtype, run_id: str) -> dict[str, Any]:
    """Held-out perplexity on every evaluation dataset, the study's tasks (lm-eval) and KL against the
    dense model; writes results.parquet (long rows) and correct.parquet (per-example task outcomes)."""
    model_spec, method = study.parse_variant(variant)
    checkpoint = variant_manifest(study, variant, calib, root)
    corpora = _corpus_fingerprints(root, study.eval_datasets + study.extra_dataset_names)
    tasks = {task.name: read_json(tasks_dir(root, task.name) / MANIFEST)["examples_fingerprint"]
             for task in study.offline_tasks}
    directory = evaluation_dir(root, variant, calib)
    inputs, inputs_hash = _inputs("evaluation", checkpoint_fingerprint=checkpoint["fingerprint"], corpora=corpora,
                                  tasks=tasks, evaluation=study.evaluation.model_dump(), forward_dtype=str(forward_dtype))
    if reused := _reusable(directory, inputs_hash, f"evaluation [{variant}|{calib}]"):
        return reused
    model, tokenizer, _ = load_variant_model(study, variant, calib, root, device=device)
    model = model.to(dtype=forward_dtype)
    measurements, correct = _measure(study, root, model, tokenizer, model_spec.name if method else None, device,
                                     forward_dtype)
    source, seed = study.parse_calib(calib) if calib else (None, None)
    identity = {
        "model": model_spec.name, "method": method.config.method if method else DENSE,
        "method_config": json.dumps(method.config.to_dict() if method else {}, sort_keys=True), "variant": variant,
        "calib": calib, "calibration_source": source, "seed": seed,
        "calibration_fingerprint": checkpoint.get("calibration_fingerprint"),
        "checkpoint_fingerprint": checkpoint["fingerprint"], "code_version": CODE_VERSIONS["evaluation"],
        "run_id": run_id, "evaluated_at": pd.Timestamp.now(tz="UTC"),
    }
    table = pd.DataFrame([{**identity, **row} for row in measurements], columns=EVAL_COLUMNS).drop(columns="n_samples")
    fingerprint = sha256_bytes([table.drop(columns=["run_id", "evaluated_at"]).to_json().encode()])
    manifest = {"variant": variant, "calib": calib, "rows": len(table), "fingerprint": fingerprint,
                "inputs": inputs, "inputs_hash": inputs_hash, "forward_dtype": str(forward_dtype)}
    with atomic_dir(directory) as tmp:
        table.to_parquet(tmp / RESULTS_FILE, index=False)
        correct.to_parquet(tmp / CORRECT_FILE, index=False)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _measure(study: Study, root: Path, model, tokenizer, dense_name: str | None, device: str, forward_dtype):
    """(metric rows, per-example correctness) of one loaded model; `dense_name` names the base model to
    compare next-token distributions with (None: this model is the dense one)."""
    from calib_assets.evaluation import evaluate_tasks_detailed, heldout_token_stream, next_token_kl, perplexity

    spec, rows = study.evaluation, []
    scored = [(dataset, f"{dataset}-heldout") for dataset in study.eval_datasets]
    for dataset, name in scored + [(dataset, dataset) for dataset in study.extra_dataset_names]:
        texts = load_corpus_split(root, dataset, "heldout")["text"].tolist()
        stream = heldout_token_stream(texts, tokenizer, spec.max_tokens)
        result = perplexity(model, stream, seq_len=spec.seq_len, batch_size=spec.batch_size, device=device)
        rows.append({"eval_dataset": name, "metric": "perplexity", "value": result.perplexity,
                     "token_count": result.n_tokens})
    if dense_name and spec.kl_tokens:
        dataset = study.eval_datasets[0]
        texts = load_corpus_split(root, dataset, "heldout")["text"].tolist()
        stream = heldout_token_stream(texts, tokenizer, spec.kl_tokens)
        windows = [stream[i:i + spec.seq_len] for i in range(0, len(stream) - spec.seq_len + 1, spec.seq_len)]
        dense, _, _ = _load_base(study, root, dense_name, device=device)
        kl = next_token_kl(dense.to(dtype=forward_dtype), model, windows, spec.batch_size, device=device)
        rows.append({"eval_dataset": f"{dataset}-heldout", "metric": "kl_vs_dense", "value": kl,
                     "token_count": len(windows) * spec.seq_len})
    correct = pd.DataFrame(columns=["task", "metric", "example", "correct"])
    specs = task_specs(study, root)
    if specs:
        # stderr: analytic for accuracies, a seeded 1,000-draw bootstrap for the cloze perplexity, run
        # in-process (harness._bootstrap_in_process); with 0 draws lm-eval would give no stderr at all
        result = evaluate_tasks_detailed(model, tokenizer, specs, batch_size=spec.batch_size, limit=spec.limit,
                                         device=device, bootstrap_iters=BOOTSTRAP_ITERS)
        rows += [{"eval_dataset": row["task"], "metric": row["metric"], "value": row["value"],
                  "stderr": row["stderr"], "n_examples": row["n_samples"]} for row in result.rows]
        correct = pd.DataFrame([{"task": task, "metric": metric, "example": int(example), "correct": bool(ok)}
                                for task, by_metric in result.correct.items()
                                for metric, outcomes in by_metric.items() for example, ok in outcomes.items()],
                               columns=correct.columns)
    return rows, correct


def read_evaluation(root: Path, variant: str, calib: str | None) -> pd.DataFrame:
    _read_manifest(evaluation_dir(root, variant, calib), "evaluation", f"{variant}|{calib}")
    return pd.read_parquet(evaluation_dir(root, variant, calib) / RESULTS_FILE)


def collect_results(study: Study, root: Path) -> pd.DataFrame:
    """Every evaluation of the study that exists on disk, in one long table, plus the share of task
    answers that flip between correct and wrong relative to the dense model."""
    partitions = [(variant, calib) for variant in study.variant_keys for calib in study.calib_keys]
    partitions += [(variant, None) for variant in study.baseline_keys]
    found = [(variant, calib) for variant, calib in partitions
             if (evaluation_dir(root, variant, calib) / RESULTS_FILE).is_file()]
    if not found:
        return pd.DataFrame(columns=EVAL_COLUMNS)
    tables = [read_evaluation(root, variant, calib) for variant, calib in found]
    tables += [_flip_rows(study, root, variant, calib, table) for (variant, calib), table in zip(found, tables)]
    results = pd.concat([t for t in tables if len(t)], ignore_index=True)
    results["n_samples"] = results["calib"].map(lambda calib: study.calib_size(calib) if calib else None).astype("Int64")
    return results[EVAL_COLUMNS]


def _flip_rows(study: Study, root: Path, variant: str, calib: str | None, table: pd.DataFrame) -> pd.DataFrame:
    from calib_assets.evaluation import answer_flips

    model_spec, method = study.parse_variant(variant)
    dense_file = evaluation_dir(root, f"{model_spec.name}.{DENSE}") / CORRECT_FILE
    own_file = evaluation_dir(root, variant, calib) / CORRECT_FILE
    if method is None or not dense_file.is_file() or not own_file.is_file() or table.empty:
        return pd.DataFrame(columns=EVAL_COLUMNS)
    dense, own = pd.read_parquet(dense_file), pd.read_parquet(own_file)
    rows = []
    for (task, metric), outcomes in own.groupby(["task", "metric"]):
        reference = dense[(dense["task"] == task) & (dense["metric"] == metric)]
        if reference.empty:
            continue
        flips = answer_flips(dict(zip(reference["example"], reference["correct"])),
                             dict(zip(outcomes["example"], outcomes["correct"])))
        rows.append({**table.iloc[0].to_dict(), "eval_dataset": task, "metric": f"{metric}_flip_share",
                     "value": flips["share"], "stderr": None, "token_count": None, "n_examples": len(outcomes)})
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


def write_eval_results(results: pd.DataFrame, duckdb_path: Path, also: Iterable[Callable[[Any], Any]] = ()) -> str:
    """Replace the DuckDB table eval_results in one transaction; return the table's content hash.
    `also`: writers of tables that belong with it (e.g. lineage), each called with the open connection
    inside the same transaction."""
    from calib_assets.warehouse import connect as connect_warehouse

    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    with connect_warehouse(duckdb_path, read_only=False) as connection:
        connection.execute("BEGIN TRANSACTION")
        connection.register("incoming", results)
        connection.execute("CREATE OR REPLACE TABLE eval_results AS SELECT * FROM incoming")
        for write in also:
            write(connection)
        connection.execute("COMMIT")
    ordered = results.drop(columns=["run_id", "evaluated_at"]).sort_values(["variant", "calib", "eval_dataset",
                                                                            "metric"], na_position="first")
    return sha256_bytes([ordered.to_json(orient="records").encode()])


def _read_manifest(directory: Path, asset: str, partition: str) -> dict[str, Any]:
    """An upstream artifact's manifest, once its files are checked against their seal."""
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{asset} [{partition}] is not materialized (no {str(path)!r}): materialize it first")
    check_contents(directory, f"{asset} [{partition}]", allow_unsealed=False, rebuild_hint=rebuild_hint(asset, partition))
    return read_json(path)


def study_artifacts(study: Study, root: Path) -> list[tuple[str, str, Path]]:
    """(asset, partition, directory) of every artifact the study can have under `root`, upstream first."""
    models = [model.name for model in study.models]
    found = [("base_model", m, model_dir(root, m)) for m in models]
    found += [("text_corpus", name, corpus_dir(root, name)) for name in study.corpus_names]
    found += [("calibration_pool", f"{m}|{source}", pool_dir(root, m, source)) for m in models
              for source in study.source_names]
    found += [("calibration_set", f"{m}|{calib}", calibration_dir(root, m, calib)) for m in models
              for calib in study.calib_keys]
    found += [("offline_tasks", task.name, tasks_dir(root, task.name)) for task in study.offline_tasks]
    calibrated = [(variant, calib) for variant in study.variant_keys for calib in study.calib_keys]
    found += [("compressed_model", f"{variant}|{calib}", checkpoint_dir(root, variant, calib))
              for variant, calib in calibrated]
    found += [("compressed_model", variant, checkpoint_dir(root, variant)) for variant in study.baseline_keys
              if study.parse_variant(variant)[1] is not None]
    found += [("evaluation", f"{variant}|{calib}", evaluation_dir(root, variant, calib)) for variant, calib in calibrated]
    found += [("baseline_evaluation", variant, evaluation_dir(root, variant)) for variant in study.baseline_keys]
    return found + [("findings_report", "(unpartitioned)", root / "report")]


def verify_study(study: Study, root: Path) -> tuple[list[str], int, int]:
    """(one line per problem, artifacts checked, artifacts not materialized) over `study_artifacts`."""
    problems, checked, missing = [], 0, 0
    for asset, partition, directory in study_artifacts(study, root):
        if not directory.is_dir():
            missing += 1
            continue
        checked += 1
        problems += [f"{asset} [{partition}]: {problem}" for problem in verify_contents(directory)]
    return problems, checked, missing


def rebuild_hint(asset: str, partition: str) -> str:
    return (f"re-materialize {asset} [{partition}]: its own step rebuilds a corrupt artifact (`calib-assets run` "
            "does, in order), and the steps that read it then run on the rebuilt one")


# -- descriptors table (written by the single DuckDB writer, with eval_results) ---------------------
DESCRIPTOR_COLUMNS = {
    "model": "VARCHAR", "calib": "VARCHAR", "calibration_source": "VARCHAR", "seed": "INTEGER",
    "source_kind": "VARCHAR", "sampling": "VARCHAR", "selection": "VARCHAR", "calibration_fingerprint": "VARCHAR",
    "n_samples": "INTEGER", "token_count": "BIGINT", "unique_tokens": "BIGINT", "type_token_ratio": "DOUBLE",
    "zipf_exponent": "DOUBLE", "ngram4_duplication": "DOUBLE", "perplexity_mean": "DOUBLE",
    "perplexity_std": "DOUBLE", "eval_ngram4_overlap": "DOUBLE", "n_short": "INTEGER", "n_boilerplate": "INTEGER",
    "n_non_english": "INTEGER", "n_duplicate": "INTEGER",
}


def collect_descriptors(study: Study, root: Path) -> pd.DataFrame:
    """One row per materialized calibration set of the study that has descriptors.json."""
    rows = []
    for model in study.models:
        for calib in study.calib_keys:
            path = calibration_dir(root, model.name, calib) / DESCRIPTORS_FILE
            if not path.is_file():
                continue
            descriptors = read_json(path)
            source, seed = study.parse_calib(calib)
            selection = study.selection_for(source)
            rows.append({**descriptors["set"], "model": model.name, "calib": calib, "calibration_source": source,
                         "seed": seed, "source_kind": study.source(source).kind,
                         "sampling": study.sampling_for(source).kind,
                         "selection": selection.kind if selection else "none",
                         "calibration_fingerprint": descriptors["fingerprint"]})
    return pd.DataFrame(rows, columns=list(DESCRIPTOR_COLUMNS))


def write_descriptor_table(study: Study, root: Path, connection) -> int:
    """Replace the DuckDB table calibration_descriptors (an open duckdb connection); return its row count."""
    return _write_descriptors(collect_descriptors(study, root), connection)


def _write_descriptors(table: pd.DataFrame, connection) -> int:
    schema = ", ".join(f"{name} {kind}" for name, kind in DESCRIPTOR_COLUMNS.items())
    connection.execute(f"CREATE OR REPLACE TABLE calibration_descriptors ({schema})")
    if len(table):
        connection.register("incoming_descriptors", table)
        connection.execute(f"INSERT INTO calibration_descriptors SELECT {', '.join(DESCRIPTOR_COLUMNS)} "
                           "FROM incoming_descriptors")
        connection.unregister("incoming_descriptors")
    return len(table)


def inspect_calibration_set(study: Study, model_name: str, calib: str, root: Path, *, n_show: int = 5,
                            seed: int = 0) -> dict[str, Any]:
    """Markdown of random samples with their flags, and the set descriptors (computed if missing)."""
    from calib_assets.calibration import load_calibration_set
    from calib_assets.calibration.descriptors import inspection_markdown

    calibration_set = load_calibration_set(calibration_dir(root, model_name, calib))
    descriptors = materialize_descriptors(study, model_name, calib, root)
    return {"fingerprint": calibration_set.fingerprint, "descriptors": descriptors["set"],
            "markdown": inspection_markdown(calibration_set.texts, descriptors, n_show=n_show, seed=seed)}


def materialize_descriptor_table(study: Study, root: Path) -> dict[str, Any]:
    """Write calibration_descriptors into the study's DuckDB file; its content hash is the data version."""
    from calib_assets.warehouse import connect as connect_warehouse

    path = warehouse_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = collect_descriptors(study, root)
    with connect_warehouse(path, read_only=False) as connection:
        rows = _write_descriptors(table, connection)
    ordered = table.sort_values(["model", "calib"])
    return {"fingerprint": sha256_bytes([ordered.to_json(orient="records").encode()]), "rows": rows}
