"""Materialization metadata that renders in the Dagster UI: previews, sizes, tables, links to artifacts."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dagster as dg
import pandas as pd

OWNERS = ["team:calib-assets"]  # every asset's owner in the UI, the dbt marts' included
PREVIEW_SAMPLES = 3
PREVIEW_CHARS = 240
PREVIEW_ROWS = 20
EVALUATION_COLUMNS = ["eval_dataset", "metric", "value", "stderr", "token_count", "n_examples"]
RESULT_KEY_COLUMNS = ["variant", "calib", "eval_dataset", "metric", "value"]
SIGNIFICANT_DIGITS = 4  # for display; the artifacts keep every digit


def placement(device: str) -> dict[str, Any]:
    """Where an accelerator step ran: device, host, and the GPUs it was given (Ray sets CUDA_VISIBLE_DEVICES)."""
    return {"device": device, "host": socket.gethostname(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _cell(value: Any) -> str:
    """A value that keeps a markdown table intact (no pipes or line breaks inside a cell)."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def calibration_preview(samples_file: Path, n: int = PREVIEW_SAMPLES, chars: int = PREVIEW_CHARS) -> dg.MetadataValue:
    """The first windows of a calibration set: index, document id, token offset, the start of the text."""
    rows = []
    with open(samples_file) as handle:
        for index, line in zip(range(n), handle):
            sample = json.loads(line)
            text = sample["text"]
            rows.append({"#": index, "doc_id": sample["doc_id"], "offset": sample["offset"],
                         "text": text[:chars] + ("…" if len(text) > chars else "")})
    return dg.MetadataValue.md(markdown_table(rows, ["#", "doc_id", "offset", "text"]))


def directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())


def checkpoint_metadata(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Size on disk, bits per parameter, sparsity, compression time and where the checkpoint lives."""
    return {
        "method": manifest.get("method_label"),
        "size_on_disk_mb": _float(directory_bytes(directory) / 1e6),
        "bits_per_param": _float(manifest.get("bits_per_param")),
        "sparsity": _float(manifest.get("sparsity")),
        "compress_seconds": _float(manifest.get("compress_seconds")),
        "path": dg.MetadataValue.path(str(directory)),
        "calibration_fingerprint": manifest.get("calibration_fingerprint"),
    }


def rounded(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` to `digits` significant digits (integers beyond them kept whole)."""
    return float(f"{value:.{digits}g}") if abs(value) < 10 ** digits else float(round(value))


def _float(value: Any) -> dg.MetadataValue | None:
    return None if value is None else dg.MetadataValue.float(rounded(float(value)))


def same_as_last(context: dg.AssetExecutionContext, data_version: str) -> bool:
    """Whether this asset partition's last materialization had `data_version`: the `reused` flag of an
    asset that rewrites its table or view every time (nothing changed for what reads it)."""
    partitions = [context.partition_key] if context.has_partition_key else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=partitions), limit=1).records
    return bool(records) and records[0].asset_materialization.tags.get("dagster/data_version") == data_version


def asset_partition_link(asset: str, partition: str) -> dg.MetadataValue:
    """A link, within the Dagster UI, to one partition of an asset."""
    return dg.MetadataValue.url(f"/assets/{asset}?view=partitions&partition={quote(partition, safe='')}")


def descriptor_table(descriptors: dict[str, Any]) -> dg.MetadataValue:
    """A calibration set's descriptors as a two-column table, numbers to SIGNIFICANT_DIGITS digits."""
    rows = [{"descriptor": name, "value": f"{value:.{SIGNIFICANT_DIGITS}g}" if isinstance(value, float) else value}
            for name, value in sorted(descriptors.items())]
    return dg.MetadataValue.md(markdown_table(rows, ["descriptor", "value"]))


def check_outcome(description: str, problems: list[str], shown: int = PREVIEW_ROWS) -> tuple[str, dict[str, Any]]:
    """An asset check's result in words (the check's own description, passed or failed with how many
    problems) and its problems as a list."""
    if not problems:
        return f"Passed: {description}", {"problems": 0}
    listed = "\n".join(f"- {_cell(problem)}" for problem in problems[:shown])
    more = f"\n- ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return (f"Failed ({len(problems)} problem{'s' if len(problems) != 1 else ''}): {description}",
            {"problems": len(problems), "problem_list": dg.MetadataValue.md(listed + more)})


def results_table(table: pd.DataFrame, columns: list[str] = EVALUATION_COLUMNS) -> dg.MetadataValue:
    """Rows of an evaluation table as markdown (the given columns that it has; floats to 6 digits)."""
    columns = [column for column in columns if column in table]
    rows = [{column: _number(row[column]) for column in columns} for _, row in table.iterrows()]
    return dg.MetadataValue.md(markdown_table(rows, columns))


def _number(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def eval_results_metadata(results: pd.DataFrame, lineage_counts: dict[str, int], duckdb_path: Path) -> dict[str, Any]:
    """Row counts (in all, per metric, per lineage table) and a preview of eval_results."""
    preview = results.sort_values(["variant", "calib", "eval_dataset", "metric"],
                                  na_position="first").head(PREVIEW_ROWS)
    per_metric = results["metric"].value_counts().sort_index()
    return {
        "rows": len(results),
        "rows_per_metric": dg.MetadataValue.json({str(k): int(v) for k, v in per_metric.items()}),
        "lineage_rows": dg.MetadataValue.json(lineage_counts),
        "preview": results_table(preview, RESULT_KEY_COLUMNS),
        "duckdb": dg.MetadataValue.path(str(duckdb_path)),
    }
