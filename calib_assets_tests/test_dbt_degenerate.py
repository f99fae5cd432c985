"""Every mart on degenerate groups (scores that do not vary, that vary by float noise only, a single set,
a single source, a mean of 0), against numpy / scipy computations with the conventions of
dbt/macros/degenerate.sql: within float noise is equal; no variation means mean = the value, std 0, range 0,
no best or worst set, no variance share or F."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from calib_assets_tests.findings_fixtures import TIED_RANGES, built_warehouse, read_table

pytestmark = pytest.mark.xdist_group("dbt_marts")

NOISE = 1e-9
SOURCE_KEYS = ["variant", "calibration_source", "n_samples", "eval_dataset", "metric"]
ALL_SETS_KEYS = ["variant", "n_samples", "eval_dataset", "metric"]


@pytest.fixture(scope="module")
def degenerate():
    path, results, completed = built_warehouse("degenerate")
    assert completed.returncode == 0, completed.stdout[-5000:]
    return path, results


def differ(values) -> bool:
    values = np.asarray(values, dtype=float)
    return len(values) > 1 and values.max() - values.min() > NOISE * np.abs(values).max()


def set_scores(results: pd.DataFrame) -> pd.DataFrame:
    """Calibrated task and perplexity scores, plus the task average (mean acc / acc_norm over tasks)."""
    calibrated = results[results["calib"].notna() & results["metric"].isin(["acc", "acc_norm", "perplexity"])].copy()
    calibrated["kind"] = np.where(calibrated["metric"] == "perplexity", "perplexity", "task")
    averages = (calibrated[calibrated["kind"] == "task"]
                .groupby(["variant", "calib", "calibration_source", "n_samples", "metric"], as_index=False)["value"]
                .mean().assign(eval_dataset="task_average", kind="task_average"))
    return pd.concat([calibrated, averages], ignore_index=True)


def groups(scores: pd.DataFrame, keys: list[str]):
    for key, group in scores.groupby(keys):
        yield dict(zip(keys, key)), group


def mart_row(mart: pd.DataFrame, key: dict) -> pd.Series:
    rows = mart[np.logical_and.reduce([mart[column] == value for column, value in key.items()])]
    assert len(rows) == 1, key
    return rows.iloc[0]


def test_the_build_passes_every_data_test(degenerate):
    path, _ = degenerate
    results = read_table(path, "select status, count(*) as n from dbt_build_results group by status")
    assert set(results["status"]) == {"success", "pass"}
    assert read_table(path, "select count(*) as n from dbt_test_failures")["n"].iloc[0] == 0


def test_float_noise_is_one_figure_for_dbt_and_pandas():
    from calib_assets.defs.dbt import DBT_PROJECT_DIR
    from calib_assets.findings.stats import FLOAT_NOISE

    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    assert project["vars"]["float_noise"] == FLOAT_NOISE == NOISE


def test_spread_of_constant_noisy_and_single_set_groups(degenerate):
    path, results = degenerate
    mart = read_table(path, "select * from mart_spread")
    scores = set_scores(results)
    checked = set()
    for key, group in groups(scores, SOURCE_KEYS):
        row, values = mart_row(mart, key), group["value"].to_numpy()
        assert row["n_sets"] == len(values) and bool(row["sets_differ"]) == differ(values)
        if differ(values):
            assert row["mean_value"] == pytest.approx(values.mean(), rel=1e-12)
            assert row["std_value"] == pytest.approx(values.std(ddof=1), rel=1e-9)
            assert row["range_value"] == pytest.approx(np.ptp(values), rel=1e-12)
        else:
            assert row["mean_value"] == values.min() and row["range_value"] == 0  # exactly, not rounding error
            assert pd.isna(row["std_value"]) if len(values) == 1 else row["std_value"] == 0
        checked.add(("differ" if differ(values) else "same", len(values) == 1))
    assert checked == {("differ", False), ("same", False), ("same", True)}
    cloze = mart[(mart["eval_dataset"] == "cloze") & (mart["metric"] == "acc")]
    assert (cloze["mean_value"] == 0.025).all() and not cloze["sets_differ"].any()
    noisy = mart[(mart["eval_dataset"] == "cloze") & (mart["metric"] == "acc_norm") & (mart["n_sets"] > 1)]
    assert len(noisy) and not noisy["sets_differ"].any() and (noisy["std_value"] == 0).all()


def test_no_best_or_worst_set_without_a_difference(degenerate):
    path, results = degenerate
    mart = read_table(path, "select * from mart_averages")
    scores = set_scores(results)
    scores = scores[scores["kind"].isin(["task_average", "perplexity"])]
    assert len(mart) == scores.groupby(ALL_SETS_KEYS).ngroups
    for key, group in groups(scores, ALL_SETS_KEYS):
        row = mart_row(mart, key)
        if not differ(group["value"]):
            assert pd.isna(row["best_calib"]) and pd.isna(row["worst_calib"]) and row["range_value"] == 0
            continue
        goodness = group["value"] * (-1 if key["eval_dataset"] == "heldout" else 1)
        tolerance = NOISE * goodness.abs().max()
        assert row["best_calib"] == min(group["calib"][goodness >= goodness.max() - tolerance])
        assert row["worst_calib"] == min(group["calib"][goodness <= goodness.min() + tolerance])
    single = mart[mart["variant"] == "m2.sparsegpt-2of4"]
    assert (single["n_sets"] == 1).all() and single["best_calib"].isna().all()


def test_variance_decomposition_against_scipy(degenerate):
    from scipy.stats import f_oneway

    path, results = degenerate
    mart = read_table(path, "select * from mart_variance")
    cases = set()
    for key, group in groups(set_scores(results), ALL_SETS_KEYS):
        row = mart_row(mart, key)
        by_source = [g["value"].to_numpy() for _, g in group.groupby("calibration_source")]
        values = group["value"].to_numpy()
        assert (row["n_sets"], row["n_sources"]) == (len(values), len(by_source))
        if not differ(values):  # the failing row of issue 19: sums of float noise, share 4.0, F 12.0
            assert (row["ss_total"], row["ss_between"], row["ss_within"]) == (0, 0, 0)
            assert pd.isna(row["between_share"]) and pd.isna(row["f_statistic"])
            cases.add("constant")
            continue
        within = sum(((v - v.mean()) ** 2).sum() for v in by_source if differ(v))
        total = ((values - values.mean()) ** 2).sum()
        assert row["ss_total"] == pytest.approx(total, rel=1e-9)
        assert row["ss_within"] == pytest.approx(within, rel=1e-9, abs=1e-15)
        if len(by_source) == 1:
            assert row["ss_between"] == 0 and pd.isna(row["between_share"]) and pd.isna(row["f_statistic"])
            cases.add("one source")
        elif within == 0:  # every source's sets agree: the mart's F is NULL, scipy's infinite or made of
            # rounding error (-2.6e16 for the task average of 0.35, 0.4 and 0.45 three times each)
            assert abs(f_oneway(*by_source).statistic) > 1e12
            assert pd.isna(row["f_statistic"]) and row["between_share"] == pytest.approx(1)
            cases.add("no within-source variance")
        else:
            assert row["f_statistic"] == pytest.approx(f_oneway(*by_source).statistic, rel=1e-9)
            assert row["between_share"] == pytest.approx((total - within) / total, rel=1e-9, abs=1e-15)
            cases.add("defined")
    assert cases == {"constant", "one source", "no within-source variance", "defined"}


def test_bootstrap_interval_of_one_set_and_of_equal_sets(degenerate):
    path, _ = degenerate
    mart = read_table(path, "select * from mart_bootstrap")
    single = mart[mart["n_sets"] == 1]
    assert len(single) and single["ci_low"].isna().all() and single["ci_high"].isna().all()
    same = mart[(mart["n_sets"] > 1) & (mart["min_value"] == mart["max_value"])]
    assert len(same) and (same["ci_low"] == same["min_value"]).all() and (same["ci_high"] == same["min_value"]).all()
    assert (same["mean_value"] == same["min_value"]).all()
    varying = mart[(mart["n_sets"] > 1) & mart["ci_low"].notna()]
    assert ((varying["ci_low"] >= varying["min_value"]) & (varying["ci_high"] <= varying["max_value"])).all()


def test_coefficient_of_variation_of_degenerate_groups(degenerate):
    path, results = degenerate
    mart = read_table(path, "select * from mart_ppl_vs_task")
    for key, group in groups(set_scores(results), SOURCE_KEYS):
        row, values = mart_row(mart, key), group["value"].to_numpy()
        if len(values) == 1 or values.mean() == 0:
            assert pd.isna(row["cv"])
        elif not differ(values):
            assert row["cv"] == 0
        else:
            assert row["cv"] == pytest.approx(values.std(ddof=1) / abs(values.mean()), rel=1e-9)
    zero = mart[mart["eval_dataset"] == "zero"]
    assert len(zero) and zero["cv"].isna().all()


def test_sources_that_tie_are_neither_best_nor_worst(degenerate):
    path, results = degenerate
    mart = read_table(path, "select * from mart_ranking")
    scores = set_scores(results)
    criteria = scores[(scores["kind"] == "perplexity") | ((scores["kind"] == "task") & (scores["metric"] == "acc"))]
    means = criteria.groupby(["variant", "eval_dataset", "metric", "calibration_source"])["value"].mean()
    expected = {}
    for (variant, dataset, _), per_source in means.groupby(level=[0, 1, 2]):
        goodness = per_source.droplevel([0, 1, 2]) * (-1 if dataset == "heldout" else 1)
        tolerance = NOISE * goodness.abs().max()
        discriminates = goodness.max() - goodness.min() > tolerance
        for source, good in goodness.items():
            counts = expected.setdefault((variant, source), np.zeros(4, dtype=int))
            counts += [1, discriminates, discriminates and good >= goodness.max() - tolerance,
                       discriminates and good <= goodness.min() + tolerance]
    assert len(mart) == len(expected)
    for row in mart.itertuples():
        assert [row.n_criteria, row.n_discriminating, row.best_count, row.worst_count] == list(
            expected[(row.variant, row.calibration_source)])
    m1 = mart[mart["variant"] == "m1.wanda-2of4"]
    assert (m1["n_criteria"] == 6).all() and (m1["n_discriminating"] == 2).all()  # next acc and perplexity
    one_source = mart[mart["variant"] == "m2.gptq-w3"]
    assert (one_source["n_discriminating"] == 0).all() and (one_source["best_count"] == 0).all()


def test_ranges_equal_up_to_float_noise_share_a_sensitivity_rank(degenerate):
    path, results = degenerate
    low, high = TIED_RANGES["tie1"], TIED_RANGES["tie2"]
    assert high[1] - high[0] != low[1] - low[0]  # two float spellings of 0.1
    mart = read_table(path, "select * from mart_task_spread where variant = 'm1.wanda-2of4' and metric = 'acc'")
    for _source, ranking in mart.groupby("calibration_source"):
        ranks = ranking.set_index("task")["sensitivity_rank"]
        ranges = ranking.set_index("task")["range_value"]
        assert ranks["tie1"] == ranks["tie2"] and ranks["cloze"] == ranks["zero"]
        for task, value in ranges.items():  # rank = 1 + tasks whose range is wider by more than float noise
            assert ranks[task] == 1 + sum(other - value > NOISE * max(abs(other), abs(value)) for other in ranges)


def test_retention_when_the_dense_model_scores_zero_or_sets_agree(degenerate):
    path, _ = degenerate
    mart = read_table(path, "select * from mart_retention where uses_calibration")
    zero = mart[mart["eval_dataset"] == "zero"]
    assert len(zero) and zero["mean_retention"].isna().all() and (zero["dense_value"] == 0).all()
    cloze = mart[(mart["eval_dataset"] == "cloze") & (mart["metric"] == "acc")]
    assert (cloze["mean_retention"] == cloze["min_retention"]).all()
    assert (cloze["mean_retention"] == 0.025 / 0.6).all()


def test_rank_correlation_is_null_where_a_side_does_not_vary(degenerate):
    from scipy.stats import spearmanr

    path, results = degenerate
    mart = read_table(path, "select * from mart_descriptors")
    constant = mart[mart["descriptor"] == "token_count"]
    assert len(constant) and constant["spearman_rho"].isna().all()
    perplexity = results[(results["metric"] == "perplexity") & results["calib"].notna()]
    dense = results[(results["method"] == "dense") & (results["metric"] == "perplexity")].set_index("model")["value"]
    for row in mart[(mart["descriptor"] == "zipf_exponent") & (mart["retention_metric"] == "perplexity")].itertuples():
        sets = perplexity[perplexity["variant"] == row.variant].sort_values("calib")
        retention = dense[sets["model"]].to_numpy() / sets["value"].to_numpy()
        zipf = 1.0 + sets["seed"].to_numpy() / 10
        rho = spearmanr(zipf, retention).statistic if differ(zipf) and differ(retention) else np.nan
        assert row.n_sets == len(sets)
        assert (pd.isna(row.spearman_rho) and np.isnan(rho)) or row.spearman_rho == pytest.approx(rho, rel=1e-9)


def test_headline_and_summary_say_no_difference(degenerate):
    from calib_assets.findings import headline_table
    from calib_assets.runner import seed_spread_summary

    path, results = degenerate
    headline = headline_table(path).set_index("variant")
    assert headline.loc["m2.sparsegpt-2of4", "best_calib"] == "no difference"
    assert headline.loc["m2.sparsegpt-2of4", "worst_calib"] == "no difference"
    assert headline.loc["m1.wanda-2of4", "best_calib"] != "no difference"
    summary = seed_spread_summary(read_table(path, "select * from mart_src_spread")).set_index(["method", "source"])
    assert summary.loc[("wanda", "src-b"), "next acc range"] == 0
    assert summary.loc[("wanda", "src-b"), "next acc cv%"] == 0
    assert summary.loc[("wanda", "src-a"), "cloze acc range"] == 0
    assert np.isnan(summary.loc[("wanda", "src-a"), "zero acc cv%"])  # a mean of 0
    assert np.isnan(summary.loc[("sparsegpt", "src-a"), "ppl cv%"])  # a single set
