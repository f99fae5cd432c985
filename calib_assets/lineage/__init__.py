"""Lineage you can query: every artifact's manifest on disk, as DuckDB tables and as a chain.

The manifests already hold each artifact's content hash (`fingerprint`) and the fingerprints of what it
was built from. Plain Python: no Dagster.

    tables  the lineage_* tables and the view eval_lineage (every eval_results row joined to its inputs)
    trace   one partition's chain down to the base model (`trace`), stale links named
    export  the exact calibration data of a set, written out (`export_calibration`)
"""

from calib_assets.lineage.export import EXPORT_FILES, export_calibration
from calib_assets.lineage.tables import EVAL_LINEAGE_SQL, TABLE_SCHEMAS, lineage_tables, write_lineage_tables
from calib_assets.lineage.trace import (
    LineageError,
    Node,
    Target,
    _allowed,
    chain_as_dicts,
    format_chain,
    parse_target,
    trace,
)

__all__ = ["EVAL_LINEAGE_SQL", "EXPORT_FILES", "LineageError", "Node", "TABLE_SCHEMAS", "Target", "_allowed",
           "chain_as_dicts", "export_calibration", "format_chain", "lineage_tables", "parse_target", "trace",
           "write_lineage_tables"]
