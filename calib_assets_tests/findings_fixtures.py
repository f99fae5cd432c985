"""Synthetic eval_results tables with known answers, and `dbt build` over them in a temporary warehouse.

Three studies: a grid (one model; GPTQ and Wanda on three sources with 8, 3 and 1 calibration sets; three
tasks; two held-out perplexities; KL and flips; dense and RTN baselines), a quantity study (no tasks,
one source, several sample counts with two seeds each) and a degenerate study (scores that do not vary,
that vary by float noise only, single sets, a single source, a mean of 0; see degenerate_eval_results).
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from calib_assets.steps import DESCRIPTOR_COLUMNS, OUTCOME_COLUMNS

MODEL = "m1"
GRID_SOURCES = {"src-a": 8, "src-b": 3, "src-c": 1}  # calibration sets per source
TASK_METRICS = {"t1": ["acc", "acc_norm"], "t2": ["acc", "acc_norm"], "t3": ["acc"]}
PERPLEXITY_DATASETS = ["src-a-heldout", "wikitext2"]
# A group with hand-checkable statistics: mean 0.6, std 0.1, range 0.2 (seeds 0, 1, 2 of src-b).
HAND_GROUP = {"variant": "m1.gptq-w3", "calibration_source": "src-b", "eval_dataset": "t1", "metric": "acc",
              "values": [0.5, 0.6, 0.7]}
QUANTITY_COUNTS = [1, 4, 16]
OUTCOME_EXAMPLES = 30  # per task of the grid's task_outcomes
# Hand-made paired groups of the grid's task_outcomes (Wanda, src-b's three sets): on t3 acc set s2 answers
# every example right and s0 none (best - worst = 1 on every example); on t2 acc the sets answer alike.
PAIRED_ALL_OR_NOTHING = {"variant": "m1.wanda-2of4", "calibration_source": "src-b", "task": "t3", "metric": "acc"}
PAIRED_ALIKE = {"variant": "m1.wanda-2of4", "calibration_source": "src-b", "task": "t2", "metric": "acc"}


def _row(variant: str, method: str, calib: str | None, source: str | None, seed: int | None,
         n_samples: int | None, eval_dataset: str, metric: str, value: float) -> dict:
    return {"model": MODEL, "method": method, "method_config": "{}", "variant": variant, "calib": calib,
            "calibration_source": source, "seed": seed, "calibration_fingerprint": calib and f"fp-{calib}",
            "checkpoint_fingerprint": f"ck-{variant}-{calib}", "eval_dataset": eval_dataset, "metric": metric,
            "value": value, "stderr": 0.01 if metric.startswith("acc") else None, "token_count": None,
            "n_examples": 50, "code_version": "1", "run_id": "r", "evaluated_at": pd.Timestamp("2026-11-24", tz="UTC"),
            "n_samples": n_samples}


def _scores(rng: np.random.Generator, variant: str, method: str, calib: str | None, source: str | None,
            seed: int | None, n_samples: int | None, tasks: bool) -> list[dict]:
    rows = [_row(variant, method, calib, source, seed, n_samples, dataset, "perplexity", rng.uniform(10, 40))
            for dataset in PERPLEXITY_DATASETS]
    if method != "dense":
        rows.append(_row(variant, method, calib, source, seed, n_samples, "src-a-heldout", "kl_vs_dense",
                         rng.uniform(0.1, 1)))
    if tasks:
        for task, metrics in TASK_METRICS.items():
            for metric in metrics:
                rows.append(_row(variant, method, calib, source, seed, n_samples, task, metric, rng.uniform(0.3, 0.8)))
                if method != "dense":
                    rows.append(_row(variant, method, calib, source, seed, n_samples, task, f"{metric}_flip_share",
                                     rng.uniform(0, 0.3)))
    return rows


def grid_eval_results(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for method, variant in [("dense", "m1.dense"), ("rtn", "m1.rtn-w3")]:
        rows += _scores(rng, variant, method, None, None, None, None, tasks=True)
    for method, variant in [("gptq", "m1.gptq-w3"), ("wanda", "m1.wanda-2of4")]:
        for source, n_sets in GRID_SOURCES.items():
            for set_seed in range(n_sets):
                rows += _scores(rng, variant, method, f"{source}.s{set_seed}", source, set_seed, 16, tasks=True)
    table = pd.DataFrame(rows)
    for set_seed, value in enumerate(HAND_GROUP["values"]):
        table.loc[(table["variant"] == HAND_GROUP["variant"]) & (table["calib"] == f"src-b.s{set_seed}")
                  & (table["eval_dataset"] == "t1") & (table["metric"] == "acc"), "value"] = value
    return table


def grid_task_outcomes(results: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    """Per example of each task and accuracy metric of every calibrated set of the grid: right with the
    probability of its eval_results score; the paired groups above by hand; t1's last example unanswered
    by src-a.s0 (so that only shared examples are compared)."""
    rng = np.random.default_rng(seed)
    scores = results[results["calib"].notna() & results["metric"].isin(["acc", "acc_norm"])]
    rows = []
    for score in scores.itertuples():
        correct = rng.random(OUTCOME_EXAMPLES) < score.value
        group = {"variant": score.variant, "calibration_source": score.calibration_source,
                 "task": score.eval_dataset, "metric": score.metric}
        if group == PAIRED_ALL_OR_NOTHING:
            correct[:] = {"src-b.s0": False, "src-b.s1": True, "src-b.s2": True}[score.calib]
            correct[: OUTCOME_EXAMPLES // 2] &= score.calib != "src-b.s1"  # s1 between the two
        elif group == PAIRED_ALIKE:
            correct = np.arange(OUTCOME_EXAMPLES) % 3 == 0
        examples = range(OUTCOME_EXAMPLES - 1 if (score.calib, score.eval_dataset) == ("src-a.s0", "t1")
                         else OUTCOME_EXAMPLES)
        rows += [{"model": score.model, "method": score.method, "variant": score.variant, "calib": score.calib,
                  "calibration_source": score.calibration_source, "n_samples": score.n_samples,
                  "task": score.eval_dataset, "metric": score.metric, "example": example,
                  "correct": bool(correct[example])} for example in examples]
    return pd.DataFrame(rows, columns=list(OUTCOME_COLUMNS))


def quantity_eval_results(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = _scores(rng, "m1.dense", "dense", None, None, None, None, tasks=False)
    for n_samples in QUANTITY_COUNTS:
        for set_seed in range(2):
            rows += _scores(rng, "m1.gptq-w3", "gptq", f"c4.n{n_samples}.s{set_seed}", "c4", set_seed, n_samples,
                            tasks=False)
    return pd.DataFrame(rows)


# The degenerate study: model m1, Wanda on three sources x three sets, and m2 with GPTQ on one source only
# and SparseGPT on a single set. Per (eval_dataset, metric), how the scores behave across m1's nine sets:
DEGENERATE_SOURCES = {"src-a": 3, "src-b": 3, "src-c": 3}
DEGENERATE_SCORES = {
    ("cloze", "acc"): "constant",              # 0.025 on every set (the failing row of issue 19)
    ("cloze", "acc_norm"): "noise",            # 0.3 or 0.1 + 0.2: equal up to float noise
    ("next", "acc"): "one_constant_source",    # src-b scores the same on its sets, the others vary
    ("next", "acc_norm"): "constant_within",   # every source scores the same on its sets, sources differ
    ("zero", "acc"): "zero",                   # 0 everywhere (the dense model too): a mean of 0
    ("heldout", "perplexity"): "varies",
}
# Tasks whose range over the sets of a source is 0.1, computed as two different float subtractions
TIED_RANGES = {"tie1": (0.25, 0.35), "tie2": (0.35, 0.45)}


def _degenerate_value(rng: np.random.Generator, behaviour: str, source: str, seed: int) -> float:
    source_index = sorted(DEGENERATE_SOURCES).index(source)
    return {
        "constant": 0.025,
        "noise": 0.3 if seed % 2 else 0.1 + 0.2,
        "one_constant_source": 0.5 if source == "src-b" else float(rng.uniform(0.3, 0.7)),
        "constant_within": 0.4 + 0.1 * source_index,
        "zero": 0.0,
        "varies": float(rng.uniform(20, 40)),
    }[behaviour]


def degenerate_eval_results(seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model in ["m1", "m2"]:
        for (dataset, metric) in DEGENERATE_SCORES:
            dense = 0.0 if dataset == "zero" else 10.0 if metric == "perplexity" else 0.6
            row = _row(f"{model}.dense", "dense", None, None, None, None, dataset, metric, dense)
            rows.append({**row, "model": model})
    for source, n_sets in DEGENERATE_SOURCES.items():
        for set_seed in range(n_sets):
            calib = f"{source}.s{set_seed}"
            for (dataset, metric), behaviour in DEGENERATE_SCORES.items():
                value = _degenerate_value(rng, behaviour, source, set_seed)
                rows.append(_row("m1.wanda-2of4", "wanda", calib, source, set_seed, 16, dataset, metric, value))
            for task, (low, high) in TIED_RANGES.items():
                value = low if set_seed == 0 else high if set_seed == 1 else (low + high) / 2
                rows.append(_row("m1.wanda-2of4", "wanda", calib, source, set_seed, 16, task, "acc", value))
    for variant, method, calibs in [("m2.gptq-w3", "gptq", ["src-a.s0", "src-a.s1", "src-a.s2"]),
                                    ("m2.sparsegpt-2of4", "sparsegpt", ["src-a.s0"])]:
        for calib in calibs:
            set_seed = int(calib[-1])
            for (dataset, metric), behaviour in DEGENERATE_SCORES.items():
                value = _degenerate_value(rng, behaviour, "src-a", set_seed)
                row = _row(variant, method, calib, "src-a", set_seed, 16, dataset, metric, value)
                rows.append({**row, "model": "m2"})
    return pd.DataFrame(rows)


def degenerate_descriptors(results: pd.DataFrame) -> pd.DataFrame:
    """Descriptors of every calibration set of the degenerate study: token_count the same for every set,
    zipf_exponent the seed (so it varies), the rest of the columns NULL."""
    sets = results[results["calib"].notna()][["model", "calib", "calibration_source", "seed"]].drop_duplicates()
    table = pd.DataFrame({name: pd.Series([None] * len(sets), dtype=object) for name in DESCRIPTOR_COLUMNS})
    for column in ["model", "calib", "calibration_source", "seed"]:
        table[column] = sets[column].to_numpy()
    table["token_count"] = 2048
    table["zipf_exponent"] = 1.0 + sets["seed"].to_numpy() / 10
    table["n_samples"] = 16
    return table


def dbt_build(duckdb_path: Path, work_dir: Path, command: tuple[str, ...] = ("build",)) -> subprocess.CompletedProcess:
    """`dbt build` (or another dbt `command`) of the project's models and tests into `duckdb_path` (target and
    logs under `work_dir`)."""
    from calib_assets.defs.dbt import DBT_PROJECT_DIR, DUCKDB_ENV, dbt_executable

    return subprocess.run(
        [dbt_executable(), *command, "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
         "--target-path", str(work_dir / "target"), "--log-path", str(work_dir / "logs")],
        env={**os.environ, DUCKDB_ENV: str(duckdb_path)}, capture_output=True, text=True, timeout=300)


@functools.cache
def built_warehouse(study: str) -> tuple[Path, pd.DataFrame, subprocess.CompletedProcess]:
    """A warehouse with the synthetic `study` ('grid', 'quantity' or 'degenerate') as eval_results and every mart built
    (once per test process). Returns (DuckDB path, the eval_results table, dbt's completed process)."""
    builders = {"grid": grid_eval_results, "quantity": quantity_eval_results, "degenerate": degenerate_eval_results}
    results = builders[study]()
    # the descriptors mart's source; empty for the studies that describe no calibration set
    descriptors = degenerate_descriptors(results) if study == "degenerate" else None
    outcomes = grid_task_outcomes(results) if study == "grid" else None
    path = write_warehouse(Path(tempfile.mkdtemp(prefix=f"calib-findings-{study}-")), results, descriptors, outcomes)
    return path, results, dbt_build(path, path.parent)


def write_warehouse(work_dir: Path, results: pd.DataFrame, descriptors: pd.DataFrame | None = None,
                    outcomes: pd.DataFrame | None = None) -> Path:
    """`work_dir`/warehouse.duckdb with the tables dbt reads: eval_results, set_descriptors and
    task_outcomes (the last two empty unless given)."""
    import duckdb

    path = work_dir / "warehouse.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.register("incoming", results)
        connection.execute("CREATE TABLE eval_results AS SELECT * FROM incoming")
        for table, columns, rows in [("set_descriptors", DESCRIPTOR_COLUMNS, descriptors),
                                     ("task_outcomes", OUTCOME_COLUMNS, outcomes)]:
            connection.execute(f"CREATE TABLE {table} ({', '.join(f'{n} {kind}' for n, kind in columns.items())})")
            if rows is not None:
                connection.register(f"incoming_{table}", rows)
                connection.execute(f"INSERT INTO {table} SELECT * FROM incoming_{table}")
    return path


def read_table(duckdb_path: Path, sql: str) -> pd.DataFrame:
    import duckdb

    with duckdb.connect(str(duckdb_path), read_only=True) as connection:
        return connection.sql(sql).df()
