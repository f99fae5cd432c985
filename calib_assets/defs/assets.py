"""The study's assets. Each body reads its partition, calls one step of the library, returns metadata
and the results of its blocking checks (a failed check stops everything downstream of the partition)."""

from typing import Any

import dagster as dg

from calib_assets import invariants, lineage, steps
from calib_assets.defs import metadata
from calib_assets.defs.automation import FINDINGS_CONDITION
from calib_assets.defs.executors import accelerator_placement
from calib_assets.defs.metadata import OWNERS
from calib_assets.defs.partitions import StudyPartitions
from calib_assets.defs.resources import ArtifactStore, Compute
from calib_assets.naming import partition_key
from calib_assets.steps import CODE_VERSIONS

CHECKS = {  # each blocking check: what it asserts (its description in the UI and the words of its result)
    "calibration_set_valid": "shape (n_samples, seq_len), one window per document, no document shared with the "
                             "source's other sets or with any evaluation text.",
    "checkpoint_invariants": "finite weights, at most 2^bits levels per quantization group, and the configured "
                             "sparsity pattern (N:M in every group, or the unstructured share).",
    "tasks_leak_free": "every task document is held-out text, never calibration data.",
    "evaluation_complete": "one finite value for every evaluation dataset and metric.",
}


def _result(manifest: dict[str, Any], checks: dict[str, list[str]] | None = None,
            **metadata_values: Any) -> dg.MaterializeResult:
    """Report the artifact's content hash as its data version, readable metadata and check results."""
    return dg.MaterializeResult(
        data_version=dg.DataVersion(manifest["fingerprint"]),
        metadata={"fingerprint": manifest["fingerprint"], "reused": bool(manifest.get("reused", False)),
                  **{key: value for key, value in metadata_values.items() if value is not None}},
        check_results=[_check_result(name, problems) for name, problems in (checks or {}).items()],
    )


def _check_result(name: str, problems: list[str]) -> dg.AssetCheckResult:
    description, values = metadata.check_outcome(CHECKS[name], problems)
    return dg.AssetCheckResult(check_name=name, passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
                               description=description, metadata=values)


def _check(name: str, asset: str, partitions_def) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, blocking=True, partitions_def=partitions_def,
                              description=CHECKS[name][0].upper() + CHECKS[name][1:])]


def _keys(context: dg.AssetExecutionContext) -> dict[str, str]:
    return dict(context.partition_key.keys_by_dimension)


def build_assets(parts: StudyPartitions, executor: str = "local") -> list:
    study = parts.study
    on_accelerator = accelerator_placement(study, executor)

    def calibration_link(variant: str, calib: str) -> dg.MetadataValue:
        """The calibration_set partition a checkpoint (or its evaluation) was calibrated on, as a UI link."""
        model_spec, _ = study.parse_variant(variant)
        return metadata.asset_partition_link("calibration_set", partition_key(model=model_spec.name, calib=calib))

    @dg.asset(
        partitions_def=parts.models, group_name="inputs", code_version=CODE_VERSIONS["base_model"],
        kinds={"pytorch", "huggingface"}, owners=OWNERS,
        description="The dense base model as a Hugging Face folder; data version = hash of its weights.",
    )
    def base_model(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        manifest = steps.materialize_base_model(study, context.partition_key, store.path)
        return _result(manifest, folder=dg.MetadataValue.path(manifest["folder"]),
                       spec=dg.MetadataValue.json(manifest["spec"]))

    @dg.asset(
        partitions_def=parts.corpora, group_name="inputs", code_version=CODE_VERSIONS["text_corpus"],
        kinds={"parquet"}, owners=OWNERS,
        description="Normalized, de-duplicated documents of one source, split into a calibration pool "
                    "and held-out evaluation text.",
    )
    def text_corpus(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        manifest = steps.materialize_corpus(study, context.partition_key, store.path)
        return _result(manifest, summary=dg.MetadataValue.json(manifest.get("summary", {})),
                       path=dg.MetadataValue.path(str(steps.corpus_dir(store.path, context.partition_key))))

    @dg.asset(
        partitions_def=parts.pools, group_name="calibration", code_version=CODE_VERSIONS["calibration_pool"],
        kinds={"numpy"}, owners=OWNERS,
        ins={"base_model": dg.AssetIn(partition_mapping=parts.to_pool("model"), dagster_type=dg.Nothing),
             "text_corpus": dg.AssetIn(partition_mapping=parts.to_pool("source"), dagster_type=dg.Nothing)},
        description="A source's calibration documents tokenized for one model; checks that the source can give "
                    "the study's disjoint calibration sets before any of them is drawn.",
    )
    def calibration_pool(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        keys = _keys(context)
        manifest = steps.materialize_calibration_pool(study, keys["model"], keys["source"], store.path)
        return _result(manifest, documents=manifest["documents"], tokens=manifest["tokens"],
                       eligible_documents=manifest["eligible_documents"])

    @dg.asset(
        partitions_def=parts.calibration, group_name="calibration", code_version=CODE_VERSIONS["calibration_set"],
        kinds={"numpy", "json"}, owners=OWNERS,
        ins={"calibration_pool": dg.AssetIn(partition_mapping=parts.pool_to_calibration(), dagster_type=dg.Nothing)},
        check_specs=_check("calibration_set_valid", "calibration_set", parts.calibration),
        description="One calibration set: n_samples windows of seq_len tokens from distinct documents of one "
                    "source (seed k = the k-th disjoint set); data version = hash of the token ids.",
    )
    def calibration_set(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        keys = _keys(context)
        manifest = steps.materialize_calibration_set(study, keys["model"], keys["calib"], store.path)
        directory = steps.calibration_dir(store.path, keys["model"], keys["calib"])
        problems = invariants.calibration_set_problems(study, store.path, keys["model"], keys["calib"])
        return _result(manifest, {"calibration_set_valid": problems}, shape=str(manifest["shape"]),
                       documents=len(set(manifest["doc_ids"])), source=manifest.get("source"),
                       seed=manifest.get("seed"), path=dg.MetadataValue.path(str(directory)),
                       descriptors=metadata.descriptor_table(manifest.get("descriptors") or {}),
                       preview=metadata.calibration_preview(directory / "samples.jsonl"))

    @dg.asset(
        partitions_def=parts.compressed, group_name="compression", code_version=CODE_VERSIONS["compressed_model"],
        kinds={"pytorch", "safetensors"}, owners=OWNERS, **on_accelerator,
        ins={"calibration_set": dg.AssetIn(partition_mapping=parts.calibration_to_compressed(),
                                           dagster_type=dg.Nothing)},
        check_specs=_check("checkpoint_invariants", "compressed_model", parts.compressed),
        description="The base model compressed with a calibration-based method on exactly one calibration set "
                    "(the base model reaches it through the set's lineage).",
    )
    def compressed_model(context: dg.AssetExecutionContext, store: ArtifactStore, compute: Compute):
        keys = _keys(context)
        device, dtype = compute.resolve()
        manifest = steps.materialize_checkpoint(study, keys["variant"], keys["calib"], store.path, device=device,
                                                forward_dtype=dtype, log=context.log.info)
        return _checkpoint_result(manifest, steps.checkpoint_dir(store.path, keys["variant"], keys["calib"]),
                                  invariants.checkpoint_problems(study, store.path, keys["variant"], keys["calib"]),
                                  device, calibration_set=calibration_link(keys["variant"], keys["calib"]))

    @dg.asset(
        partitions_def=parts.baselines, group_name="compression", code_version=CODE_VERSIONS["compressed_model"],
        kinds={"pytorch", "safetensors"}, owners=OWNERS, **on_accelerator,
        ins={"base_model": dg.AssetIn(partition_mapping=parts.model_to_baselines(), dagster_type=dg.Nothing)},
        check_specs=_check("checkpoint_invariants", "baseline_model", parts.baselines),
        description="Controls that use no calibration data, once per model: the dense model itself and "
                    "calibration-free methods (RTN, magnitude pruning).",
    )
    def baseline_model(context: dg.AssetExecutionContext, store: ArtifactStore, compute: Compute):
        _, method = study.parse_variant(context.partition_key)
        if method is None:
            manifest = steps.dense_baseline_manifest(study, context.partition_key, store.path)
            return _result(manifest, {"checkpoint_invariants": []}, dense=True,
                           path=dg.MetadataValue.path(manifest["folder"]))
        device, dtype = compute.resolve()
        manifest = steps.materialize_checkpoint(study, context.partition_key, None, store.path, device=device,
                                                forward_dtype=dtype, log=context.log.info)
        return _checkpoint_result(manifest, steps.checkpoint_dir(store.path, context.partition_key),
                                  invariants.checkpoint_problems(study, store.path, context.partition_key, None),
                                  device)

    @dg.asset(
        group_name="evaluation", code_version=CODE_VERSIONS["offline_tasks"], kinds={"json"}, owners=OWNERS,
        deps=[dg.AssetDep("text_corpus", partition_mapping=dg.AllPartitionMapping())],
        check_specs=_check("tasks_leak_free", "offline_tasks", None),
        description="Offline lm-eval tasks (LAMBADA-style cloze, HellaSwag-style next sentence) built "
                    "deterministically from the held-out text of the evaluation datasets.",
    )
    def offline_tasks(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        manifest, problems = steps.offline_tasks_with_leak_check(study, store.path)
        return _result(manifest, {"tasks_leak_free": problems},
                       tasks=dg.MetadataValue.json(manifest.get("tasks", {})))

    def _evaluation_asset(name: str, upstream: str, partitions_def, description: str):
        @dg.asset(
            name=name, partitions_def=partitions_def, group_name="evaluation",
            code_version=CODE_VERSIONS["evaluation"], kinds={"pytorch", "parquet"}, owners=OWNERS, **on_accelerator,
            ins={upstream: dg.AssetIn(dagster_type=dg.Nothing),
                 "text_corpus": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), dagster_type=dg.Nothing),
                 "offline_tasks": dg.AssetIn(dagster_type=dg.Nothing)},
            check_specs=_check("evaluation_complete", name, partitions_def),
            description=description,
        )
        def _evaluate(context: dg.AssetExecutionContext, store: ArtifactStore, compute: Compute):
            if isinstance(partitions_def, dg.MultiPartitionsDefinition):
                keys = _keys(context)
                variant, calib = keys["variant"], keys["calib"]
            else:
                variant, calib = context.partition_key, None
            device, dtype = compute.resolve()
            manifest = steps.evaluate_variant(study, variant, calib, store.path, device=device,
                                              forward_dtype=dtype, run_id=context.run_id)
            table = steps.read_evaluation(store.path, variant, calib)
            return _result(manifest, {"evaluation_complete": invariants.evaluation_problems(study, table)},
                           rows=manifest["rows"], results=metadata.results_table(table), **metadata.placement(device),
                           calibration_set=calib and calibration_link(variant, calib),
                           path=dg.MetadataValue.path(str(steps.evaluation_dir(store.path, variant, calib))))

        return _evaluate

    evaluation = _evaluation_asset(
        "evaluation", "compressed_model", parts.compressed,
        "One compressed checkpoint: held-out perplexity, the study's tasks through lm-eval, KL to the dense model.")
    baseline_eval = _evaluation_asset(
        "baseline_eval", "baseline_model", parts.baselines,
        "The dense model and the calibration-free controls, once per model, on the same evaluation suite.")

    @dg.asset(
        group_name="warehouse", code_version=CODE_VERSIONS["eval_results"], kinds={"duckdb"}, owners=OWNERS,
        pool="duckdb", deps=[evaluation, baseline_eval], automation_condition=FINDINGS_CONDITION,
        description="Every evaluation of the study in one long DuckDB table (one row per model, method, "
                    "calibration set, evaluation dataset and metric): the source of the dbt marts. Beside it, "
                    "task_outcomes (each calibrated checkpoint's per-example task answers), the lineage_* "
                    "tables (from every artifact's manifest) and the view eval_lineage, which joins "
                    "each row to its checkpoint, calibration set, source snapshot and base model.",
    )
    def eval_results(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        results = steps.collect_results(study, store.path)
        lineage_counts: dict[str, int] = {}
        outcomes: dict[str, int] = {}
        fingerprint = steps.write_eval_results(results, steps.warehouse_path(store.path), also=[
            lambda connection: lineage_counts.update(lineage.write_lineage_tables(study, store.path, connection)),
            lambda connection: outcomes.update(rows=steps.write_task_outcomes(study, store.path, connection))])
        return _result({"fingerprint": fingerprint, "reused": metadata.same_as_last(context, fingerprint)},
                       evaluated_partitions=steps.evaluated_partitions(results),
                       task_outcome_rows=outcomes["rows"],
                       expected_partitions=steps.expected_evaluations(study),
                       **metadata.eval_results_metadata(results, lineage_counts, steps.warehouse_path(store.path)))

    return [base_model, text_corpus, calibration_pool, calibration_set, compressed_model, baseline_model,
            offline_tasks, evaluation, baseline_eval, eval_results]


def _checkpoint_result(manifest: dict[str, Any], directory, problems: list[str], device: str,
                       **more: Any) -> dg.MaterializeResult:
    return _result(manifest, {"checkpoint_invariants": problems}, **metadata.checkpoint_metadata(manifest, directory),
                   **metadata.placement(device), **more)
