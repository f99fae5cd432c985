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
from calib_assets.artifacts import atomic_dir, read_json, sha256_bytes, sha256_json, write_json
from calib_assets.study import DENSE, Study

CODE_VERSIONS = {
    "base_model": "1",
    "text_corpus": "1",
    "calibration_pool": "1",
    "calibration_set": "1",
    "compressed_model": "1",
    "offline_tasks": "1",
    "evaluation": "2",
    "eval_results": "1",
}
MANIFEST = "manifest.json"


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
def _reusable(directory: Path, inputs_hash: str) -> dict[str, Any] | None:
    manifest_path = directory / MANIFEST
    if manifest_path.is_file():
        manifest = read_json(manifest_path)
        if manifest.get("inputs_hash") == inputs_hash:
            return {**manifest, "reused": True}
    return None


def _inputs(step: str, **inputs: Any) -> tuple[dict[str, Any], str]:
    inputs = {"step": step, "code_version": CODE_VERSIONS[step], **inputs}
    return inputs, sha256_json(inputs)


# -- base model ----------------------------------------------------------------------------------
def materialize_base_model(study: Study, model_name: str, root: Path) -> dict[str, Any]:
    from calib_assets.models import prepare_model_folder, weights_fingerprint

    spec = study.model(model_name)
    folder = prepare_model_folder(spec, root / "model-cache")
    manifest = {"model": model_name, "spec": spec.model_dump(), "folder": str(folder),
                "fingerprint": weights_fingerprint(folder), "code_version": CODE_VERSIONS["base_model"]}
    existing = model_dir(root, model_name) / MANIFEST
    if existing.is_file() and read_json(existing) == manifest:
        return {**manifest, "reused": True}
    with atomic_dir(model_dir(root, model_name)) as tmp:
        write_json(tmp / MANIFEST, manifest)
    return manifest


def base_model_manifest(root: Path, model_name: str) -> dict[str, Any]:
    return _read_manifest(model_dir(root, model_name), "base_model", model_name)


def _load_base(study: Study, root: Path, model_name: str, device: str = "cpu"):
    from calib_assets.models import load_model, trust_remote_code

    manifest = base_model_manifest(root, model_name)
    model, tokenizer = load_model(Path(manifest["folder"]), device=device,
                                  trust_remote_code=trust_remote_code(study.model(model_name)))
    return model, tokenizer, manifest


# -- text corpus ---------------------------------------------------------------------------------
def materialize_corpus(study: Study, source_name: str, root: Path) -> dict[str, Any]:
    from calib_assets.sources import build_corpus, save_corpus

    spec = study.source(source_name)
    directory = corpus_dir(root, source_name)
    # evaluation-only text is held out whole, short paragraphs included (WikiText-style)
    split = ({"heldout_fraction": 1.0, "min_chars": 1} if source_name in study.extra_dataset_names
             else {"heldout_fraction": study.calibration.heldout_fraction})
    inputs, inputs_hash = _inputs("text_corpus", spec=spec.model_dump(), **split)
    if reused := _reusable(directory, inputs_hash):
        return reused
    corpus = build_corpus(spec, **split)
    save_corpus(corpus, directory)
    manifest = read_json(directory / MANIFEST)
    manifest.update(source=source_name, inputs=inputs, inputs_hash=inputs_hash)
    write_json(directory / MANIFEST, manifest)
    return manifest


def load_corpus_split(root: Path, source_name: str, split: str) -> pd.DataFrame:
    from calib_assets.sources import load_corpus

    corpus = load_corpus(corpus_dir(root, source_name))
    return corpus[corpus["split"] == split]


# -- calibration set -----------------------------------------------------------------------------
def materialize_calibration_pool(study: Study, model_name: str, source_name: str, root: Path) -> dict[str, Any]:
    """The source's calibration documents tokenized by the model's tokenizer; fails early (before any
    calibration set or compression) when the source cannot give the study's disjoint sets."""
    from transformers import AutoTokenizer

    from calib_assets.calibration import check_capacity, save_token_pool, tokenize_documents
    from calib_assets.models import trust_remote_code

    model_manifest = base_model_manifest(root, model_name)
    corpus_manifest = _read_manifest(corpus_dir(root, source_name), "text_corpus", source_name)
    spec = study.calibration
    directory = pool_dir(root, model_name, source_name)
    inputs, inputs_hash = _inputs("calibration_pool", model_fingerprint=model_manifest["fingerprint"],
                                  corpus_fingerprint=corpus_manifest["fingerprint"])
    if not (reused := _reusable(directory, inputs_hash)):
        tokenizer = AutoTokenizer.from_pretrained(model_manifest["folder"],
                                                  trust_remote_code=trust_remote_code(study.model(model_name)))
        corpus = load_corpus_split(root, source_name, "calibration")
        documents = tokenize_documents(dict(zip(corpus["doc_id"], corpus["text"])), tokenizer)
        reused = save_token_pool(documents, directory, model=model_name, source=source_name, inputs=inputs,
                                 inputs_hash=inputs_hash)
    lengths = reused["token_lengths"]
    eligible = sum(length >= spec.seq_len for length in lengths.values())
    check_capacity(eligible, source=source_name, seq_len=spec.seq_len, n_samples=max(spec.sizes), seeds=spec.seeds)
    return {**reused, "eligible_documents": eligible}


def materialize_calibration_set(study: Study, model_name: str, calib: str, root: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from calib_assets.calibration import build_calibration_set, load_token_pool, save_calibration_set
    from calib_assets.models import trust_remote_code

    source_name, seed = study.parse_calib(calib)
    model_manifest = base_model_manifest(root, model_name)
    pool_manifest = _read_manifest(pool_dir(root, model_name, source_name), "calibration_pool",
                                   f"{model_name}|{source_name}")
    spec, n_samples = study.calibration, study.calib_size(calib)
    directory = calibration_dir(root, model_name, calib)
    inputs, inputs_hash = _inputs("calibration_set", pool_fingerprint=pool_manifest["fingerprint"], seed=seed,
                                  n_samples=n_samples, seq_len=spec.seq_len, sampler_seed=spec.sampler_seed)
    if reused := _reusable(directory, inputs_hash):
        return reused
    tokenizer = AutoTokenizer.from_pretrained(model_manifest["folder"],
                                              trust_remote_code=trust_remote_code(study.model(model_name)))
    documents = load_token_pool(pool_dir(root, model_name, source_name))
    calibration_set = build_calibration_set(
        documents, tokenizer, source=source_name, seq_len=spec.seq_len, n_samples=n_samples, seed=seed,
        sampler_seed=spec.sampler_seed)
    return save_calibration_set(calibration_set, directory, model=model_name, calib=calib,
                                inputs=inputs, inputs_hash=inputs_hash)


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
        forward_dtype=str(forward_dtype), batch_size=study.compute.batch_size)
    if reused := _reusable(directory, inputs_hash):
        return reused
    model, _, _ = _load_base(study, root, model_spec.name)
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
    corpora = {name: _read_manifest(corpus_dir(root, name), "text_corpus", name)["fingerprint"]
               for name in study.eval_datasets}
    corpus = pd.concat([load_corpus(corpus_dir(root, name)) for name in study.eval_datasets], ignore_index=True)
    builders = {"cloze": build_cloze_task, "next_sentence": build_next_sentence_task}
    manifests, built_any = {}, False
    for task in study.offline_tasks:
        directory = tasks_dir(root, task.name)
        inputs, inputs_hash = _inputs("offline_tasks", corpora=corpora, task=task.model_dump())
        reused = _reusable(directory, inputs_hash)
        if reused is None:
            built_any = True
            built = builders[task.kind](corpus, n_examples=task.n_examples, seed=task.seed)
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
    corpora = {name: _read_manifest(corpus_dir(root, name), "text_corpus", name)["fingerprint"]
               for name in study.eval_datasets + study.extra_dataset_names}
    tasks = {task.name: read_json(tasks_dir(root, task.name) / MANIFEST)["examples_fingerprint"]
             for task in study.offline_tasks}
    directory = evaluation_dir(root, variant, calib)
    inputs, inputs_hash = _inputs("evaluation", checkpoint_fingerprint=checkpoint["fingerprint"], corpora=corpora,
                                  tasks=tasks, evaluation=study.evaluation.model_dump(), forward_dtype=str(forward_dtype))
    if reused := _reusable(directory, inputs_hash):
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
        # bootstrap_iters=0: lm-eval's bootstrap forks a process pool, which can deadlock in a process
        # that already runs threads (Dagster, torch); stderr of accuracies is analytic and still reported
        result = evaluate_tasks_detailed(model, tokenizer, specs, batch_size=spec.batch_size, limit=spec.limit,
                                         device=device, bootstrap_iters=0)
        rows += [{"eval_dataset": row["task"], "metric": row["metric"], "value": row["value"],
                  "stderr": row["stderr"], "n_examples": row["n_samples"]} for row in result.rows]
        correct = pd.DataFrame([{"task": task, "metric": metric, "example": int(example), "correct": bool(ok)}
                                for task, by_metric in result.correct.items()
                                for metric, outcomes in by_metric.items() for example, ok in outcomes.items()],
                               columns=correct.columns)
    return rows, correct


def read_evaluation(root: Path, variant: str, calib: str | None) -> pd.DataFrame:
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
    import duckdb

    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(duckdb_path)) as connection:
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
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{asset} [{partition}] is not materialized (no {str(path)!r}): materialize it first")
    return read_json(path)
