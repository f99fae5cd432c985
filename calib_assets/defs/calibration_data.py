"""Calibration data in the UI: random samples of each set with their anomaly flags, and the descriptor table."""

import dagster as dg

from calib_assets import steps
from calib_assets.defs import metadata
from calib_assets.defs.automation import FINDINGS_CONDITION
from calib_assets.defs.metadata import OWNERS
from calib_assets.defs.partitions import StudyPartitions
from calib_assets.defs.resources import ArtifactStore
from calib_assets.steps import CODE_VERSIONS


def build_calibration_data_assets(parts: StudyPartitions) -> list:
    study = parts.study

    @dg.asset(
        partitions_def=parts.calibration, group_name="calibration",
        code_version=CODE_VERSIONS["calib_inspection"], kinds={"markdown"}, owners=OWNERS,
        ins={"calibration_set": dg.AssetIn(dagster_type=dg.Nothing)},
        description="Random samples of one calibration set with their anomaly flags (short, boilerplate, "
                    "non-English, duplicate) and the set's descriptors: look at the data before trusting results.",
    )
    def calib_inspection(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        keys = dict(context.partition_key.keys_by_dimension)
        report = steps.inspect_calibration_set(study, keys["model"], keys["calib"], store.path)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(report["fingerprint"]),
            metadata={"reused": metadata.same_as_last(context, report["fingerprint"]),
                      "samples": dg.MetadataValue.md(report["markdown"]),
                      "descriptors": metadata.descriptor_table(report["descriptors"]),
                      "flagged": report["flagged"]})

    @dg.asset(
        group_name="warehouse", code_version=CODE_VERSIONS["set_descriptors"], kinds={"duckdb"}, owners=OWNERS,
        pool="duckdb", deps=["calibration_set"], automation_condition=FINDINGS_CONDITION,
        description="Descriptors of every calibration set of the study (token statistics, Zipf exponent, "
                    "duplication, base-model perplexity, overlap with the evaluation text, flagged samples) in "
                    "the DuckDB table set_descriptors: the source of mart_descriptors.",
    )
    def set_descriptors(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        manifest = steps.materialize_descriptor_table(study, store.path)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(manifest["fingerprint"]),
            metadata={"reused": metadata.same_as_last(context, manifest["fingerprint"]),
                      "rows": manifest["rows"], "expected_rows": steps.expected_descriptor_rows(study),
                      "duckdb": dg.MetadataValue.path(str(steps.warehouse_path(store.path)))})

    return [calib_inspection, set_descriptors]
