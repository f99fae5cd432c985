"""mart_paired_test against a brute-force pandas computation of its documented rule, on the
grid fixture's task_outcomes (random answers, plus hand-made groups whose answer is known)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from calib_assets_tests.findings_fixtures import (
    GRID_SOURCES,
    OUTCOME_EXAMPLES,
    PAIRED_ALIKE,
    PAIRED_ALL_OR_NOTHING,
    grid_task_outcomes,
    read_table,
)
from calib_assets_tests.test_dbt_marts import grid  # noqa: F401  (the built grid warehouse)

pytestmark = pytest.mark.xdist_group("dbt_marts")
GROUP = ["variant", "calibration_source", "n_samples", "task", "metric"]


def _brute_force(outcomes: pd.DataFrame, replicates: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every group by loops: shared examples, best / worst set with their tie rules, md5-drawn replicates."""
    pooled = pd.concat([outcomes, outcomes.assign(calibration_source="(all)")], ignore_index=True)
    rows = []
    for key, group in pooled.groupby(GROUP):
        sets = sorted(group["calib"].unique())
        if len(sets) < 2:
            continue
        answered = {calib: dict(zip(g["example"], g["correct"].astype(int))) for calib, g in group.groupby("calib")}
        shared = sorted(set.intersection(*(set(a) for a in answered.values())))
        accuracy = {calib: np.mean([answered[calib][e] for e in shared]) for calib in sets}
        best = min(c for c in sets if accuracy[c] == max(accuracy.values()))
        worst = max(c for c in sets if accuracy[c] == min(accuracy.values()))
        differences = np.array([answered[best][e] - answered[worst][e] for e in shared], dtype=float)
        n = len(differences)
        draws = np.array([[int(hashlib.md5(f"examples:{seed}:{n}:{r}:{d}".encode()).hexdigest()[:15], 16) % n
                           for d in range(n)] for r in range(replicates)])
        low, high = np.quantile(differences[draws].mean(axis=1), [0.025, 0.975])
        rows.append({**dict(zip(GROUP, key)), "n_sets": len(sets), "n_examples": n, "best_calib": best,
                     "worst_calib": worst, "difference": differences.mean(), "ci_low": low, "ci_high": high,
                     "best_only_correct": int((differences > 0).sum()),
                     "worst_only_correct": int((differences < 0).sum())})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def paired(grid):  # noqa: F811
    path, results = grid
    return read_table(path, "select * from mart_paired_test"), grid_task_outcomes(results)


def test_every_group_matches_the_brute_force_computation(paired):
    mart, outcomes = paired
    expected = _brute_force(outcomes)
    both = expected.merge(mart, on=GROUP, validate="1:1", suffixes=("_expected", ""))
    assert len(both) == len(expected) == len(mart) > 0
    for column in ["n_sets", "n_examples", "best_calib", "worst_calib", "best_only_correct", "worst_only_correct"]:
        assert (both[column] == both[f"{column}_expected"]).all(), column
    for column in ["difference", "ci_low", "ci_high"]:
        np.testing.assert_allclose(both[column], both[f"{column}_expected"], rtol=1e-12, atol=1e-12)
    assert (both["exceeds_noise"] == (both["ci_low"] > 0)).all()
    assert set(mart["replicates"]) == {1000} and set(mart["confidence"]) == {0.95}


def test_groups_span_sources_and_all_sets_and_skip_single_sets(paired):
    mart, _ = paired
    sources = {source for source, n_sets in GRID_SOURCES.items() if n_sets > 1}
    assert set(mart["calibration_source"]) == sources | {"(all)"}  # src-c has one set: no comparison
    pooled = mart[mart["calibration_source"] == "(all)"]
    assert (pooled["n_sets"] == sum(GRID_SOURCES.values())).all()
    t1 = mart[(mart["task"] == "t1") & mart["calibration_source"].isin(["src-a", "(all)"])
              & (mart["variant"] == "m1.gptq-w3")]
    assert (t1["n_examples"] == OUTCOME_EXAMPLES - 1).all()  # src-a.s0 left one example unanswered
    assert (mart["best_calib"] != mart["worst_calib"]).all() and (mart["difference"] >= 0).all()


def _row(mart: pd.DataFrame, group: dict) -> pd.Series:
    rows = mart[np.logical_and.reduce([mart[key] == value for key, value in group.items()])]
    assert len(rows) == 1
    return rows.iloc[0]


def test_a_set_right_everywhere_against_one_wrong_everywhere_exceeds_noise(paired):
    row = _row(paired[0], PAIRED_ALL_OR_NOTHING)
    assert (row.best_calib, row.worst_calib) == ("src-b.s2", "src-b.s0")
    assert row.difference == 1 and row.ci_low == row.ci_high == 1 and row.exceeds_noise
    assert (row.best_only_correct, row.worst_only_correct) == (OUTCOME_EXAMPLES, 0)


def test_sets_that_answer_alike_show_no_difference(paired):
    row = _row(paired[0], PAIRED_ALIKE)
    assert (row.best_calib, row.worst_calib) == ("src-b.s0", "src-b.s2")  # ties: lowest key best, highest worst
    assert row.difference == 0 and row.ci_low == row.ci_high == 0 and not row.exceeds_noise
