"""Reading the dbt marts back from DuckDB, and the study's headline table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# The marts shown in the report, in reading order, with the caption under which they appear.
REPORT_MARTS = {
    "mart_spread": "Spread across the calibration sets of one source, every score (Table 1 for tasks)",
    "mart_task_spread": "Per-task spread within one source (Figure 2)",
    "mart_averages": "Task average and perplexity over all calibration sets (Figure 4)",
    "mart_ppl_vs_task": "Coefficients of variation: perplexity against tasks (Table 2)",
    "mart_paired_test": "Best against worst calibration set on the same examples: does the spread "
                        "exceed evaluation noise? (paired bootstrap over examples)",
    "mart_ranking": "Calibration sources ranked, with best and worst counts",
    "mart_size_curve": "Scores against the number of calibration examples (Figure 3)",
    "mart_variance": "Between-source against within-source variation",
    "mart_bootstrap": "Bootstrap confidence intervals of the mean over calibration sets",
    "mart_retention": "Retention against the dense model",
    "mart_baselines": "Dense model and calibration-free controls",
    "mart_set_scores": "Every calibration set's scores (the points of Figures 2 and 4)",
}
HEADLINE_COLUMNS = ["method", "variant", "score", "n_sets", "n_sources", "mean", "min", "max", "range",
                    "best_calib", "worst_calib", "dense"]


NO_DIFFERENCE = "no difference"  # in place of a best or worst set when the sets score the same


def shown_in_percent(metric: str) -> bool:
    """Accuracies and answer-flip shares: fractions in the marts, percentages in every table shown."""
    return metric in ("acc", "acc_norm") or metric.endswith("_flip_share")


def in_percent(table: pd.DataFrame, values: list[str], metric: str = "metric") -> pd.DataFrame:
    """`table` with the `values` columns of its percentage metrics times 100 and those metrics named 'NAME %'."""
    percent = table[metric].map(shown_in_percent).astype(bool)
    shown = table.copy()
    for column in values:
        shown[column] = shown[column].astype(float).where(~percent, shown[column].astype(float) * 100)
    shown[metric] = shown[metric].where(~percent, shown[metric] + " %")
    return shown


def read_marts(duckdb_path: Path, names: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """The named marts (default: every report mart) as DataFrames, from a read-only connection.
    A mart that does not exist yet raises with the list of tables that do."""
    marts, missing = read_available_marts(duckdb_path, names)
    if missing:
        raise LookupError(f"{duckdb_path}: {'; '.join(f'{name}: {why}' for name, why in missing.items())}")
    return marts


def read_available_marts(duckdb_path: Path, names: list[str] | None = None
                         ) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """(the named marts that the last dbt build built, {mart: why it is left out} for the others): a
    mart that does not exist, or that the last build skipped or failed to build, would show stale rows."""
    from calib_assets.findings.build_status import read_build_status
    from calib_assets.warehouse import connect as connect_warehouse

    names = list(names or REPORT_MARTS)
    with connect_warehouse(duckdb_path, read_only=True) as connection:
        existing = {row[0] for row in connection.sql("select table_name from information_schema.tables").fetchall()}
        unbuilt = read_build_status(connection).unbuilt_models
        missing = {name: f"not built in the last dbt build ({unbuilt[name]})" for name in names if name in unbuilt}
        missing |= {name: f"no such table (the warehouse has: {', '.join(sorted(existing))}); materialize the dbt "
                          "marts first" for name in names if name not in existing and name not in missing}
        marts = {name: connection.sql(f"select * from {name}").df() for name in names if name not in missing}
    return marts, missing


def headline_scores(distribution: pd.DataFrame) -> pd.DataFrame:
    """The rows of mart_averages the headline is about: the task average (acc) when the study
    has tasks, else every held-out perplexity."""
    tasks = distribution[(distribution["kind"] == "task_average") & (distribution["metric"] == "acc")]
    return tasks if len(tasks) else distribution[distribution["kind"] == "perplexity"]


def headline_table(duckdb_path: Path) -> pd.DataFrame:
    """Per (model, method, sample count): the best-worst range over all calibration sets of the task average
    (or, without tasks, of each held-out perplexity), with the dense model's value for reference."""
    return headline_from_marts(read_marts(duckdb_path, ["mart_averages", "mart_baselines"]))


def headline_from_marts(marts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The headline table from mart_averages and mart_baselines, accuracies in %; best and worst
    read 'no difference' where the calibration sets score the same."""
    scores = headline_scores(marts["mart_averages"])
    dense = (marts["mart_baselines"].query("method == 'dense'")
             [["model", "eval_dataset", "metric", "value"]].rename(columns={"value": "dense"}))
    table = scores.merge(dense, on=["model", "eval_dataset", "metric"], how="left").rename(columns={
        "mean_value": "mean", "min_value": "min", "max_value": "max", "range_value": "range"})
    table = in_percent(table, ["mean", "min", "max", "range", "dense"])
    table = table.assign(score=table["eval_dataset"] + " " + table["metric"])
    for column in ("best_calib", "worst_calib"):
        table[column] = table[column].where(table["sets_differ"].astype(bool), NO_DIFFERENCE)
    ordered = table.sort_values(["model", "method", "variant", "n_samples", "score"])
    return ordered[HEADLINE_COLUMNS].reset_index(drop=True)


def without_tie_claims(paired: pd.DataFrame) -> pd.DataFrame:
    """mart_paired_test's rows with NO_DIFFERENCE for the best and worst set where the two
    answer equally often (difference 0): the mart picks them by its tie rule, there is nothing to claim."""
    shown = paired.copy()
    tie = shown["difference"].astype(float).abs() < 1e-12
    for column in ("best_calib", "worst_calib"):
        shown[column] = shown[column].where(~tie, NO_DIFFERENCE)
    return shown


def paired_test_summary(paired: pd.DataFrame) -> pd.DataFrame:
    """The rows of mart_paired_test over all calibration sets of a study ('(all)'), one per
    (method, variant, task, metric): best and worst set, their accuracies and the difference with its
    interval in %, and the verdict. The statistics are the mart's; this only lays them out."""
    rows = without_tie_claims(paired[paired["calibration_source"] == "(all)"]).sort_values(
        ["method", "variant", "task", "metric"])
    several = rows.groupby("method")["variant"].nunique().max() > 1 if len(rows) else False
    percent = {name: rows[name] * 100 for name in ("best_value", "worst_value", "difference", "ci_low", "ci_high")}
    table = pd.DataFrame({
        "method": rows["method"], **({"variant": rows["variant"]} if several else {}),
        "task": rows["task"], "metric": rows["metric"], "sets": rows["n_sets"], "examples": rows["n_examples"],
        "best": rows["best_calib"], "best %": percent["best_value"], "worst": rows["worst_calib"],
        "worst %": percent["worst_value"], "diff %": percent["difference"],
        "95% CI": [f"[{low:.1f}, {high:.1f}]" for low, high in zip(percent["ci_low"], percent["ci_high"])],
        "beyond noise": rows["exceeds_noise"].map({True: "yes", False: "no"})})
    return table.rename(columns={"95% CI": f"{rows['confidence'].iloc[0]:.0%} CI"} if len(rows) else {})


def format_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as aligned plain text with rounded floats; a statistic that is undefined reads '-'."""
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500):
        return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.{digits}f}")
