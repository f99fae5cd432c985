"""The pipeline's steps as plain functions: each reads its inputs from the artifact root, calls the
library, writes one artifact atomically and returns its manifest. The Dagster assets are thin wrappers.

Every artifact records the fingerprint of its inputs; when the artifact on disk was built from exactly
the same inputs, a step reuses it instead of recomputing (`reuse_or_build`, so re-running a study only
does new work).

    layout       paths of every artifact, CODE_VERSIONS, manifests and reuse_or_build
    inputs       base model and text corpora (read, mixed, generated)
    calibration  token pools, calibration sets, descriptors, inspection
    compression  checkpoints; loading and exporting a variant
    evaluation   offline tasks and each variant's evaluation
    warehouse    the DuckDB tables eval_results, task_outcomes and set_descriptors

The names below are the package's interface (`from calib_assets import steps; steps.X`).
"""

from calib_assets.steps.calibration import (
    DESCRIPTORS_FILE,
    FLAGS,
    INSPECTION_SAMPLES,
    calibration_manifest,
    check_pool_capacity,
    flagged_samples,
    inspect_calibration_set,
    inspection_seed,
    materialize_calibration_pool,
    materialize_calibration_set,
    materialize_descriptors,
)
from calib_assets.steps.compression import (
    dense_baseline_manifest,
    export_variant_model,
    load_variant_model,
    materialize_checkpoint,
    variant_manifest,
)
from calib_assets.steps.evaluation import (
    BOOTSTRAP_ITERS,
    CORRECT_FILE,
    EVAL_COLUMNS,
    LEAKED_TASKS_FINGERPRINT,
    RESULTS_FILE,
    check_task_data_files,
    evaluate_variant,
    materialize_offline_tasks,
    offline_tasks_with_leak_check,
    read_evaluation,
    task_specs,
)
from calib_assets.steps.inputs import (
    GENERATED_MIN_CHARS,
    TASK_MIN_CHARS,
    base_model_manifest,
    build_source_corpus,
    derived_corpus_inputs,
    forward_placement,
    load_base,
    load_base_tokenizer,
    load_corpus_split,
    materialize_base_model,
    materialize_corpus,
    scoring_model,
)
from calib_assets.steps.layout import (
    CODE_VERSIONS,
    MANIFEST,
    calibration_dir,
    checkpoint_dir,
    corpus_dir,
    evaluation_dir,
    model_dir,
    pool_dir,
    read_manifest,
    rebuild_hint,
    reuse_or_build,
    step_inputs,
    stored_manifest,
    study_artifacts,
    tasks_dir,
    verify_study,
    warehouse_path,
)
from calib_assets.steps.warehouse import (
    DESCRIPTOR_COLUMNS,
    OUTCOME_COLUMNS,
    collect_descriptors,
    collect_results,
    evaluated_partitions,
    expected_descriptor_rows,
    expected_evaluations,
    materialize_descriptor_table,
    write_descriptor_table,
    write_eval_results,
    write_task_outcomes,
)

__all__ = [
    "BOOTSTRAP_ITERS", "CODE_VERSIONS", "CORRECT_FILE", "DESCRIPTORS_FILE", "DESCRIPTOR_COLUMNS", "EVAL_COLUMNS",
    "FLAGS", "GENERATED_MIN_CHARS", "INSPECTION_SAMPLES", "LEAKED_TASKS_FINGERPRINT", "MANIFEST", "OUTCOME_COLUMNS",
    "RESULTS_FILE",
    "TASK_MIN_CHARS", "base_model_manifest", "build_source_corpus", "calibration_dir", "calibration_manifest",
    "check_pool_capacity", "check_task_data_files", "checkpoint_dir", "collect_descriptors", "collect_results",
    "corpus_dir", "dense_baseline_manifest", "derived_corpus_inputs", "evaluate_variant", "evaluated_partitions",
    "evaluation_dir", "expected_descriptor_rows", "expected_evaluations", "export_variant_model", "flagged_samples",
    "forward_placement", "inspect_calibration_set", "inspection_seed", "load_base", "load_base_tokenizer",
    "load_corpus_split", "load_variant_model", "materialize_base_model", "materialize_calibration_pool",
    "materialize_calibration_set", "materialize_checkpoint", "materialize_corpus", "materialize_descriptor_table",
    "materialize_descriptors",
    "materialize_offline_tasks", "model_dir", "offline_tasks_with_leak_check", "pool_dir", "read_evaluation",
    "read_manifest", "rebuild_hint", "reuse_or_build", "scoring_model", "step_inputs", "stored_manifest",
    "study_artifacts", "task_specs", "tasks_dir", "variant_manifest", "verify_study", "warehouse_path",
    "write_descriptor_table", "write_eval_results", "write_task_outcomes",
]
