"""The study's tables in the DuckDB warehouse: eval_results (every evaluation on disk, plus answer flips
against the dense model), task_outcomes (each calibrated checkpoint's per-example task answers, for paired
tests between calibration sets) and set_descriptors (every set's descriptors), each replaced whole."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from calib_assets.artifacts import read_json, sha256_bytes
from calib_assets.evaluation import answer_flips
from calib_assets.steps.calibration import DESCRIPTORS_FILE
from calib_assets.steps.evaluation import CORRECT_FILE, EVAL_COLUMNS, RESULTS_FILE, read_evaluation
from calib_assets.steps.layout import calibration_dir, evaluation_dir, warehouse_path
from calib_assets.study import DENSE, Study
from calib_assets.warehouse import connect as connect_warehouse

DESCRIPTOR_COLUMNS = {
    "model": "VARCHAR", "calib": "VARCHAR", "calibration_source": "VARCHAR", "seed": "INTEGER",
    "source_kind": "VARCHAR", "sampling": "VARCHAR", "selection": "VARCHAR", "calibration_fingerprint": "VARCHAR",
    "n_samples": "INTEGER", "token_count": "BIGINT", "unique_tokens": "BIGINT", "type_token_ratio": "DOUBLE",
    "zipf_exponent": "DOUBLE", "ngram4_duplication": "DOUBLE", "perplexity_mean": "DOUBLE",
    "perplexity_std": "DOUBLE", "eval_ngram4_overlap": "DOUBLE", "n_short": "INTEGER", "n_boilerplate": "INTEGER",
    "n_non_english": "INTEGER", "n_duplicate": "INTEGER",
}


# -- eval_results --------------------------------------------------------------------------------
def collect_results(study: Study, root: Path) -> pd.DataFrame:
    """Every evaluation of the study that exists on disk, in one long table, plus the share of task
    answers that flip between correct and wrong relative to the dense model."""
    partitions: list[tuple[str, str | None]] = [(variant, calib) for variant in study.variant_keys
                                                for calib in study.calib_keys]
    partitions += [(variant, None) for variant in study.baseline_keys]
    found = [(variant, calib) for variant, calib in partitions
             if (evaluation_dir(root, variant, calib) / RESULTS_FILE).is_file()]
    if not found:
        return pd.DataFrame(columns=EVAL_COLUMNS)
    tables = [read_evaluation(root, variant, calib) for variant, calib in found]
    tables += [_flip_rows(study, root, variant, calib, table) for (variant, calib), table in zip(found, tables)]
    results = pd.concat([t for t in tables if len(t)], ignore_index=True)
    sizes = results["calib"].map(lambda calib: study.calib_size(calib) if calib else None)
    results["n_samples"] = sizes.astype("Int64")
    return results[EVAL_COLUMNS]


def _flip_rows(study: Study, root: Path, variant: str, calib: str | None, table: pd.DataFrame) -> pd.DataFrame:
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


def expected_evaluations(study: Study) -> int:
    """Evaluation partitions of the study: every variant on every calibration set, and every baseline."""
    return len(study.variant_keys) * len(study.calib_keys) + len(study.baseline_keys)


def evaluated_partitions(results: pd.DataFrame) -> int:
    """Evaluation partitions that have rows in `results` (an eval_results table)."""
    return results[["variant", "calib"]].drop_duplicates().shape[0]


def write_eval_results(results: pd.DataFrame, duckdb_path: Path, also: Iterable[Callable[[Any], Any]] = ()) -> str:
    """Replace the DuckDB table eval_results in one transaction; return the table's content hash.
    `also`: writers of tables that belong with it (e.g. lineage), each called with the open connection
    inside the same transaction."""
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


# -- task_outcomes -------------------------------------------------------------------------------
OUTCOME_COLUMNS = {
    "model": "VARCHAR", "method": "VARCHAR", "variant": "VARCHAR", "calib": "VARCHAR",
    "calibration_source": "VARCHAR", "n_samples": "INTEGER", "task": "VARCHAR", "metric": "VARCHAR",
    "example": "INTEGER", "correct": "BOOLEAN",
}


def collect_task_outcomes(study: Study, root: Path) -> pd.DataFrame:
    """Per example of every task, whether each evaluated calibrated checkpoint answered it right (its
    correct.parquet): one row per (variant, calibration set, task, metric, example)."""
    tables = []
    for variant in study.variant_keys:
        model_spec, method = study.parse_variant(variant)
        for calib in study.calib_keys:
            path = evaluation_dir(root, variant, calib) / CORRECT_FILE
            if method is None or not path.is_file():
                continue
            outcomes = pd.read_parquet(path)
            source, _ = study.parse_calib(calib)
            tables.append(outcomes.assign(model=model_spec.name, method=method.config.method, variant=variant,
                                          calib=calib, calibration_source=source, n_samples=study.calib_size(calib)))
    if not tables:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in OUTCOME_COLUMNS})
    return pd.concat(tables, ignore_index=True)[list(OUTCOME_COLUMNS)]


def write_task_outcomes(study: Study, root: Path, connection) -> int:
    """Replace the DuckDB table task_outcomes (an open duckdb connection); return its row count."""
    return _replace_table(connection, "task_outcomes", OUTCOME_COLUMNS, collect_task_outcomes(study, root))


def _replace_table(connection, name: str, columns: dict[str, str], table: pd.DataFrame) -> int:
    """Replace the DuckDB table `name` with `table`'s `columns` (name -> SQL type); return its row count."""
    schema = ", ".join(f"{column} {kind}" for column, kind in columns.items())
    connection.execute(f"CREATE OR REPLACE TABLE {name} ({schema})")
    if len(table):
        connection.register(f"incoming_{name}", table)
        connection.execute(f"INSERT INTO {name} SELECT {', '.join(columns)} FROM incoming_{name}")
        connection.unregister(f"incoming_{name}")
    return len(table)


# -- set_descriptors ---------------------------------------------------------------------
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


def expected_descriptor_rows(study: Study) -> int:
    """Rows of set_descriptors once every set is materialized: one per model and calibration set."""
    return len(study.models) * len(study.calib_keys)


def write_descriptor_table(study: Study, root: Path, connection) -> int:
    """Replace the DuckDB table set_descriptors (an open duckdb connection); return its row count."""
    return _write_descriptors(collect_descriptors(study, root), connection)


def _write_descriptors(table: pd.DataFrame, connection) -> int:
    return _replace_table(connection, "set_descriptors", DESCRIPTOR_COLUMNS, table)


def materialize_descriptor_table(study: Study, root: Path) -> dict[str, Any]:
    """Write set_descriptors into the study's DuckDB file; its content hash is the data version."""
    path = warehouse_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = collect_descriptors(study, root)
    with connect_warehouse(path, read_only=False) as connection:
        rows = _write_descriptors(table, connection)
    ordered = table.sort_values(["model", "calib"])
    return {"fingerprint": sha256_bytes([ordered.to_json(orient="records").encode()]), "rows": rows}
