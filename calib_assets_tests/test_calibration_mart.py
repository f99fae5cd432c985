"""The dbt mart relating calibration descriptors to retention, against a pandas Spearman computation."""

import os
import subprocess

import duckdb
import numpy as np
import pandas as pd
import pytest

from calib_assets.defs.dbt import DBT_PROJECT_DIR, DUCKDB_ENV, dbt_executable
from calib_assets.steps import DESCRIPTOR_COLUMNS

pytestmark = pytest.mark.xdist_group("dbt")


def _eval_rows(rng) -> pd.DataFrame:
    rows = []
    for task in ("cloze", "next"):
        rows.append(dict(model="m", method="dense", variant="m.dense", calib=None, eval_dataset=task,
                         metric="acc", value=0.8))
    rows.append(dict(model="m", method="dense", variant="m.dense", calib=None, eval_dataset="d-heldout",
                     metric="perplexity", value=10.0))
    for seed in range(6):
        calib = f"src.s{seed}"
        for task in ("cloze", "next"):
            rows.append(dict(model="m", method="gptq", variant="m.gptq-w3", calib=calib, eval_dataset=task,
                             metric="acc", value=float(rng.uniform(0.4, 0.8))))
        rows.append(dict(model="m", method="gptq", variant="m.gptq-w3", calib=calib, eval_dataset="d-heldout",
                         metric="perplexity", value=float(rng.uniform(11, 20))))
        rows.append(dict(model="m", method="gptq", variant="m.gptq-w3", calib=calib, eval_dataset="cloze",
                         metric="acc_flip_share", value=0.3))  # not an accuracy: must not enter the mean
    frame = pd.DataFrame(rows)
    frame["calibration_source"] = frame["calib"].str.split(".").str[0]
    frame["seed"] = frame["calib"].str[-1].astype(float)
    for column in ("method_config", "calibration_fingerprint", "checkpoint_fingerprint", "code_version", "run_id"):
        frame[column] = "x"
    frame["stderr"], frame["token_count"], frame["n_examples"] = None, None, None
    frame["evaluated_at"] = pd.Timestamp("2026-11-24", tz="UTC")
    return frame


def _descriptor_rows(rng) -> pd.DataFrame:
    frame = pd.DataFrame({name: rng.uniform(0, 1, 6) for name in DESCRIPTOR_COLUMNS})
    frame["model"], frame["calib"] = "m", [f"src.s{seed}" for seed in range(6)]
    frame["token_count"] = [100, 100, 120, 90, 100, 130]  # ties get average ranks
    for flag in ("n_short", "n_boilerplate", "n_non_english", "n_duplicate"):
        frame[flag] = 0
    return frame


def test_mart_matches_a_pandas_spearman(tmp_path):
    rng = np.random.default_rng(0)
    evals, descriptors = _eval_rows(rng), _descriptor_rows(rng)
    database = tmp_path / "w.duckdb"
    with duckdb.connect(str(database)) as connection:
        connection.register("e", evals)
        connection.execute("create table eval_results as select * from e")
        connection.register("d", descriptors)
        connection.execute("create table set_descriptors as select * from d")
    env = {**os.environ, DUCKDB_ENV: str(database)}
    subprocess.run([dbt_executable(), "build", "--quiet", "--select", "+mart_descriptors",
                    "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
                    "--target-path", str(tmp_path / "target")], check=True, cwd=DBT_PROJECT_DIR, env=env)
    with duckdb.connect(str(database), read_only=True) as connection:
        mart = connection.sql("select * from mart_descriptors").df()

    compressed = evals[evals["method"] == "gptq"]
    task = compressed[compressed["metric"] == "acc"].groupby("calib")["value"].mean() / 0.8
    perplexity = 10.0 / compressed[compressed["metric"] == "perplexity"].set_index("calib")["value"]
    table = descriptors.set_index("calib")
    for metric, retention in (("task_accuracy", task), ("perplexity", perplexity)):
        for descriptor in ("token_count", "zipf_exponent", "perplexity_mean"):
            expected = table[descriptor].astype(float).corr(retention, method="spearman")
            row = mart[(mart["retention_metric"] == metric) & (mart["descriptor"] == descriptor)]
            assert len(row) == 1 and row["n_sets"].iloc[0] == 6
            assert row["spearman_rho"].iloc[0] == pytest.approx(expected, abs=1e-9)
