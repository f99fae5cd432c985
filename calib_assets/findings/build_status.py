"""What the last dbt build did, read back from the warehouse (dbt's on-run-end hook writes it: see
dbt/macros/record_build_results.sql): which tests failed, with the rows behind them, and which models it
did not build. A failed test costs only what it guards: the report and the printed findings flag the
marts it reads and leave out the models dbt skipped, and the run ends non-zero."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

PROBLEM_TEST_STATUSES = ("fail", "warn", "error")
PROBLEM_MODEL_STATUSES = ("error", "skipped")
# Tables that warehouses written before every asset name fit a zoomed-out graph node (16 characters) hold
# under their old names: nothing updates them any more, and nothing here drops what an earlier run made.
RENAMED_TABLES = {
    "calibration_descriptors": "set_descriptors", "stg_calibration_descriptors": "stg_descriptors",
    "stg_task_outcomes": "stg_outcomes", "int_calibration_spread": "int_spread",
    "mart_average_distribution": "mart_averages", "mart_bootstrap_ci": "mart_bootstrap",
    "mart_calibration_spread": "mart_spread", "mart_descriptor_retention": "mart_descriptors",
    "mart_paired_calibration_test": "mart_paired_test", "mart_perplexity_vs_task_variation": "mart_ppl_vs_task",
    "mart_sample_count_curve": "mart_size_curve", "mart_source_ranking": "mart_ranking",
    "mart_source_spread": "mart_src_spread", "mart_variance_decomposition": "mart_variance",
}


@dataclass(frozen=True)
class FailedTest:
    name: str
    status: str  # fail, warn or error
    models: tuple[str, ...]  # the models the test reads
    failures: int | None  # failing rows dbt counted
    message: str
    rows: pd.DataFrame  # the first failing rows (dbt var failure_rows_kept)


@dataclass(frozen=True)
class BuildStatus:
    recorded: bool  # False: no dbt build has recorded its results in this warehouse yet
    failed_tests: list[FailedTest] = field(default_factory=list)
    unbuilt_models: dict[str, str] = field(default_factory=dict)  # model -> status (error, skipped)
    superseded_tables: dict[str, str] = field(default_factory=dict)  # old name -> the table now built instead

    @property
    def ok(self) -> bool:
        return not self.failed_tests and not self.unbuilt_models

    def tests_on(self, model: str) -> list[FailedTest]:
        return [test for test in self.failed_tests if model in test.models]


def read_build_status(connection) -> BuildStatus:
    """The last build's problems, from an open DuckDB connection to the warehouse."""
    tables = {row[0] for row in connection.sql("select table_name from information_schema.tables").fetchall()}
    superseded = {old: new for old, new in RENAMED_TABLES.items() if old in tables}
    if not {"dbt_build_results", "dbt_test_failures"} <= tables:
        return BuildStatus(recorded=False, superseded_tables=superseded)
    results = connection.sql("select * from dbt_build_results order by name").df()
    rows = connection.sql("select test, failing_row from dbt_test_failures order by test, row_number").df()
    tests = results[(results["resource_type"] == "test") & results["status"].isin(PROBLEM_TEST_STATUSES)]
    models = results[(results["resource_type"] == "model") & results["status"].isin(PROBLEM_MODEL_STATUSES)]
    failed = [FailedTest(name=test.name, status=test.status, models=tuple(test.models),
                         failures=None if pd.isna(test.failures) else int(test.failures), message=test.message,
                         rows=pd.DataFrame([json.loads(row) for row in rows.loc[rows["test"] == test.name,
                                                                                 "failing_row"]]))
              for test in tests.itertuples()]
    return BuildStatus(recorded=True, failed_tests=failed, unbuilt_models=dict(zip(models["name"], models["status"])),
                       superseded_tables=superseded)


def build_status(duckdb_path: Path) -> BuildStatus:
    from calib_assets.warehouse import connect as connect_warehouse

    with connect_warehouse(duckdb_path, read_only=True) as connection:
        return read_build_status(connection)


def format_build_status(status: BuildStatus, max_rows: int = 10) -> str:
    """The failed tests with their rows and the models left unbuilt, as text (empty when all is well)."""
    if status.ok:
        return ""
    lines = []
    for test in status.failed_tests:
        count = "" if test.failures is None else f": {test.failures} failing row{'s' * (test.failures != 1)}"
        lines.append(f"dbt test {test.status.upper()} {test.name} (on {', '.join(test.models) or '?'}){count}")
        if not test.rows.empty:
            with pd.option_context("display.width", 250, "display.max_columns", 40):
                lines.append(_indent(test.rows.head(max_rows).to_string(index=False)))
        elif test.message:
            lines.append(_indent(test.message))
    for model, state in status.unbuilt_models.items():
        lines.append(f"dbt model {model} was not built in the last build ({state}): its table is left out")
    return "\n".join(lines)


def superseded_note(status: BuildStatus) -> str:
    """A line naming the warehouse's tables of earlier names, which hold stale rows (empty when there are none)."""
    if not status.superseded_tables:
        return ""
    renamed = ", ".join(f"{old} (now {new})" for old, new in status.superseded_tables.items())
    return (f"The warehouse also holds tables under their earlier names, no longer updated: {renamed}; "
            "read the new ones, and drop the old ones when nothing needs them.")


def problems_from_run_results(run_results: dict) -> list[str]:
    """The nodes of a dbt run_results.json that failed for a reason other than a failing test (a model or
    hook error): those stop the findings; failing tests and the models dbt skipped after them do not."""
    return [f"{result['unique_id']}: {result['status']}: {result.get('message') or ''}".strip()
            for result in run_results.get("results", [])
            if result["status"] == "error" and not result["unique_id"].startswith("test.")]


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
