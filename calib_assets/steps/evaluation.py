"""Evaluation: the offline tasks built from held-out text, and each variant's evaluation (held-out
perplexity, the study's lm-eval tasks, KL to the dense model) as results.parquet and correct.parquet."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from calib_assets.artifacts import atomic_dir, read_json, sha256_bytes, sha256_json, write_json
from calib_assets.evaluation import (
    TaskLeakError,
    TaskSpec,
    build_cloze_task,
    build_next_sentence_task,
    check_heldout_only,
    evaluate_tasks_detailed,
    heldout_token_stream,
    next_token_kl,
    perplexity,
    read_task_manifest,
    write_lm_eval_task,
)
from calib_assets.naming import partition_key
from calib_assets.sources import load_corpus
from calib_assets.steps.compression import load_variant_model, variant_manifest
from calib_assets.steps.inputs import corpus_fingerprints, load_base, load_corpus_split
from calib_assets.steps.layout import (
    CODE_VERSIONS,
    MANIFEST,
    corpus_dir,
    evaluation_dir,
    read_manifest,
    reuse_or_build,
    step_inputs,
    tasks_dir,
)
from calib_assets.study import DENSE, Study
from calib_assets.timing import span

EVAL_COLUMNS = [
    "model", "method", "method_config", "variant", "calib", "calibration_source", "seed", "n_samples",
    "calibration_fingerprint", "checkpoint_fingerprint", "eval_dataset", "metric", "value", "stderr",
    "token_count", "n_examples", "code_version", "run_id", "evaluated_at",
]
RESULTS_FILE, CORRECT_FILE = "results.parquet", "correct.parquet"
BOOTSTRAP_ITERS = 1000  # lm-eval's draws for the stderr of bootstrapped task metrics (the cloze perplexity)
LEAKED_TASKS_FINGERPRINT = "leak"  # offline_tasks' data version when a task holds calibration text (check fails)


# -- offline tasks -------------------------------------------------------------------------------
def materialize_offline_tasks(study: Study, root: Path) -> dict[str, Any]:
    """Build the study's offline tasks from held-out text only, and prove it (check_heldout_only)."""
    check_task_data_files(study)
    corpora = corpus_fingerprints(root, study.eval_datasets)
    corpus = pd.concat([load_corpus(corpus_dir(root, name)) for name in study.eval_datasets], ignore_index=True)
    builders: dict[str, Callable[..., Any]] = {"cloze": build_cloze_task, "next_sentence": build_next_sentence_task}
    manifests = {}
    for task in study.offline_tasks:
        directory = tasks_dir(root, task.name)
        inputs, inputs_hash = step_inputs("offline_tasks", corpora=corpora, task=task.model_dump())

        def build(task=task, directory=directory, inputs=inputs, inputs_hash=inputs_hash) -> dict[str, Any]:
            built = builders[task.kind](corpus, n_examples=task.n_examples, seed=task.seed, **task.builder_options())
            built.manifest.update(inputs=inputs, inputs_hash=inputs_hash)
            write_lm_eval_task(built, directory, task.name)
            return read_task_manifest(directory)

        manifest = reuse_or_build(f"offline_tasks [{task.name}]", directory, inputs_hash, build)
        check_heldout_only(manifest, corpus)
        manifests[task.name] = manifest
    fingerprint = sha256_json({name: m["examples_fingerprint"] for name, m in manifests.items()})
    return {"fingerprint": fingerprint, "tasks": {name: len(m["doc_ids"]) for name, m in manifests.items()},
            "reused": all(m.get("reused", False) for m in manifests.values())}


def offline_tasks_with_leak_check(study: Study, root: Path) -> tuple[dict[str, Any], list[str]]:
    """(manifest, problems): a task that holds calibration text is a failed check naming the leaked
    documents, not a failed step; any other error fails the step itself."""
    try:
        return materialize_offline_tasks(study, root), []
    except TaskLeakError as error:
        return {"fingerprint": LEAKED_TASKS_FINGERPRINT}, [str(error)]


def check_task_data_files(study: Study) -> None:
    """Local task files must exist before any model is compressed for a study that scores them."""
    for task in study.lm_eval_tasks:
        files = [task.data_files] if isinstance(task.data_files, str) else task.data_files or []
        missing = [file for file in files if not Path(file).expanduser().is_file()]
        if missing:
            raise FileNotFoundError(f"task {task.name!r}: data_files {missing} do not exist (paths are relative to "
                                    f"{str(Path.cwd())!r}); give existing JSON/JSONL files in the task's schema")


def task_specs(study: Study, root: Path) -> list:
    specs = [TaskSpec(name=task.name, include_path=str(tasks_dir(root, task.name))) for task in study.offline_tasks]
    return specs + [TaskSpec(name=task.name, data_files=task.data_files) for task in study.lm_eval_tasks]


# -- evaluation ----------------------------------------------------------------------------------
def evaluate_variant(study: Study, variant: str, calib: str | None, root: Path, *, device: str,
                     forward_dtype, run_id: str) -> dict[str, Any]:
    """Held-out perplexity on every evaluation dataset, the study's tasks (lm-eval) and KL against the
    dense model; writes results.parquet (long rows) and correct.parquet (per-example task outcomes)."""
    model_spec, method = study.parse_variant(variant)
    checkpoint = variant_manifest(study, variant, calib, root)
    corpora = corpus_fingerprints(root, study.eval_datasets + study.extra_dataset_names)
    tasks = {task.name: read_json(tasks_dir(root, task.name) / MANIFEST)["examples_fingerprint"]
             for task in study.offline_tasks}
    directory = evaluation_dir(root, variant, calib)
    inputs, inputs_hash = step_inputs("evaluation", checkpoint_fingerprint=checkpoint["fingerprint"],
                                      corpora=corpora, tasks=tasks, evaluation=study.evaluation.model_dump(),
                                      forward_dtype=str(forward_dtype))

    def build() -> dict[str, Any]:
        with span("evaluation: load model"):
            model, tokenizer, _ = load_variant_model(study, variant, calib, root, device=device)
            model = model.to(dtype=forward_dtype)
        measurements, correct = _measure(study, root, model, tokenizer, model_spec.name if method else None, device,
                                         forward_dtype)
        source, seed = study.parse_calib(calib) if calib else (None, None)
        identity = {
            "model": model_spec.name, "method": method.config.method if method else DENSE,
            "method_config": json.dumps(method.config.to_dict() if method else {}, sort_keys=True),
            "variant": variant, "calib": calib, "calibration_source": source, "seed": seed,
            "calibration_fingerprint": checkpoint.get("calibration_fingerprint"),
            "checkpoint_fingerprint": checkpoint["fingerprint"], "code_version": CODE_VERSIONS["evaluation"],
            "run_id": run_id, "evaluated_at": pd.Timestamp.now(tz="UTC"),
        }
        table = pd.DataFrame([{**identity, **row} for row in measurements],
                             columns=EVAL_COLUMNS).drop(columns="n_samples")
        fingerprint = sha256_bytes([table.drop(columns=["run_id", "evaluated_at"]).to_json().encode()])
        manifest = {"variant": variant, "calib": calib, "rows": len(table), "fingerprint": fingerprint,
                    "inputs": inputs, "inputs_hash": inputs_hash, "forward_dtype": str(forward_dtype)}
        with atomic_dir(directory) as tmp:
            table.to_parquet(tmp / RESULTS_FILE, index=False)
            correct.to_parquet(tmp / CORRECT_FILE, index=False)
            write_json(tmp / MANIFEST, manifest)
        return manifest

    return reuse_or_build(f"evaluation [{partition_key(variant=variant, calib=calib)}]", directory, inputs_hash, build)


def _measure(study: Study, root: Path, model, tokenizer, dense_name: str | None, device: str, forward_dtype):
    """(metric rows, per-example correctness) of one loaded model; `dense_name` names the base model to
    compare next-token distributions with (None: this model is the dense one)."""
    spec, rows = study.evaluation, []
    scored = [(dataset, f"{dataset}-heldout") for dataset in study.eval_datasets]
    for dataset, name in scored + [(dataset, dataset) for dataset in study.extra_dataset_names]:
        texts = load_corpus_split(root, dataset, "heldout")["text"].tolist()
        stream = heldout_token_stream(texts, tokenizer, spec.max_tokens)
        with span("evaluation: held-out perplexity"):
            result = perplexity(model, stream, seq_len=spec.seq_len, batch_size=spec.batch_size, device=device)
        rows.append({"eval_dataset": name, "metric": "perplexity", "value": result.perplexity,
                     "token_count": result.n_tokens})
    if dense_name and spec.kl_tokens:
        dataset, name = (scored + [(dataset, dataset) for dataset in study.extra_dataset_names])[0]
        texts = load_corpus_split(root, dataset, "heldout")["text"].tolist()
        stream = heldout_token_stream(texts, tokenizer, spec.kl_tokens)
        windows = [stream[i:i + spec.seq_len] for i in range(0, len(stream) - spec.seq_len + 1, spec.seq_len)]
        with span("evaluation: KL to the dense model (its load included)"):
            dense, _, _ = load_base(study, root, dense_name, device=device)
            kl = next_token_kl(dense.to(dtype=forward_dtype), model, windows, spec.batch_size, device=device)
        rows.append({"eval_dataset": name, "metric": "kl_vs_dense", "value": kl,
                     "token_count": len(windows) * spec.seq_len})
    correct = pd.DataFrame(columns=["task", "metric", "example", "correct"])
    specs = task_specs(study, root)
    if specs:
        # stderr: analytic for accuracies, a seeded 1,000-draw bootstrap for the cloze perplexity, run
        # in-process (harness._bootstrap_in_process); with 0 draws lm-eval would give no stderr at all
        with span("evaluation: tasks (lm-eval)"):
            harness = evaluate_tasks_detailed(model, tokenizer, specs, batch_size=spec.batch_size, limit=spec.limit,
                                              device=device, bootstrap_iters=BOOTSTRAP_ITERS)
        rows += [{"eval_dataset": row["task"], "metric": row["metric"], "value": row["value"],
                  "stderr": row["stderr"], "n_examples": row["n_samples"]} for row in harness.rows]
        correct = pd.DataFrame([{"task": task, "metric": metric, "example": int(example), "correct": bool(ok)}
                                for task, by_metric in harness.correct.items()
                                for metric, outcomes in by_metric.items() for example, ok in outcomes.items()],
                               columns=correct.columns)
    return rows, correct


def read_evaluation(root: Path, variant: str, calib: str | None) -> pd.DataFrame:
    read_manifest(evaluation_dir(root, variant, calib), "evaluation", partition_key(variant=variant, calib=calib))
    return pd.read_parquet(evaluation_dir(root, variant, calib) / RESULTS_FILE)
