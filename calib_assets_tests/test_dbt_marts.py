"""Each dbt mart against a pandas computation on a synthetic eval_results table with known answers."""

from __future__ import annotations

import hashlib
import itertools
import math
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from calib_assets_tests.findings_fixtures import HAND_GROUP, QUANTITY_COUNTS, built_warehouse, read_table

pytestmark = pytest.mark.xdist_group("dbt_marts")

SOURCE_KEYS = ["variant", "calibration_source", "n_samples", "eval_dataset", "metric"]
ALL_SETS_KEYS = ["variant", "n_samples", "eval_dataset", "metric"]


@pytest.fixture(scope="module", params=["grid", "quantity"])
def warehouse(request):
    path, results, completed = built_warehouse(request.param)
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-2000:]
    return path, results


@pytest.fixture(scope="module")
def grid():
    path, results, completed = built_warehouse("grid")
    assert completed.returncode == 0, completed.stdout[-5000:]
    return path, results


def set_scores(results: pd.DataFrame) -> pd.DataFrame:
    """Calibrated scores with a kind, plus the task averages (mean acc / acc_norm over tasks per set)."""
    calibrated = results[results["calibration_source"].notna()].copy()
    calibrated["kind"] = np.select(
        [calibrated["metric"].isin(["acc", "acc_norm"]), calibrated["metric"] == "perplexity"],
        ["task", "perplexity"], "other")
    averages = (calibrated[calibrated["kind"] == "task"]
                .groupby(["variant", "calib", "calibration_source", "n_samples", "metric"], as_index=False)["value"]
                .mean().assign(eval_dataset="task_average", kind="task_average"))
    return pd.concat([calibrated, averages], ignore_index=True)


def merged(mart: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    both = expected.merge(mart, on=keys, validate="1:1", suffixes=("_expected", ""))
    assert len(both) == len(expected) == len(mart)
    return both


def assert_close(actual, expected, **kwargs):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float),
                               rtol=kwargs.get("rtol", 1e-9), atol=kwargs.get("atol", 1e-12))


def spread_stats(scores: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return (scores.groupby(keys, dropna=False)["value"].agg(["count", "mean", "std", "min", "max"])
            .reset_index())


def test_dbt_build_passes_every_data_test(warehouse):
    path, _ = warehouse
    tables = set(read_table(path, "select table_name from information_schema.tables")["table_name"])
    assert {"mart_spread", "mart_set_scores", "mart_task_spread", "mart_averages",
            "mart_ppl_vs_task", "mart_ranking", "mart_size_curve",
            "mart_variance", "mart_bootstrap", "mart_retention", "mart_baselines"} <= tables


def test_calibration_spread_matches_pandas(warehouse):
    path, results = warehouse
    expected = spread_stats(set_scores(results), SOURCE_KEYS)
    both = merged(read_table(path, "select * from mart_spread"), expected, SOURCE_KEYS)
    assert (both["n_sets"] == both["count"]).all()
    assert_close(both["mean_value"], both["mean"])
    assert_close(both["std_value"].fillna(-1), both["std"].fillna(-1))  # NULL exactly where one set
    assert_close(both["range_value"], both["max"] - both["min"])


def test_hand_computed_group_and_single_set_source(grid):
    path, _ = grid
    row = read_table(path, f"select * from mart_spread where variant = '{HAND_GROUP['variant']}' and "
                           f"calibration_source = 'src-b' and eval_dataset = 't1' and metric = 'acc'").iloc[0]
    assert (row["n_sets"], row["mean_value"], row["std_value"], row["range_value"]) == pytest.approx((3, 0.6, 0.1, 0.2))
    single = read_table(path, "select * from mart_spread where calibration_source = 'src-c'")
    assert len(single) > 0 and (single["n_sets"] == 1).all() and single["std_value"].isna().all()
    assert (single["range_value"] == 0).all()


def test_task_average_is_the_mean_acc_over_tasks(grid):
    path, results = grid
    mart = read_table(path, "select * from mart_set_scores where kind = 'task_average'")
    acc = results[(results["metric"] == "acc") & results["calib"].notna()]
    expected = acc.groupby(["variant", "calib"])["value"].agg(["mean", "count"]).reset_index()
    both = expected.merge(mart[mart["metric"] == "acc"], on=["variant", "calib"], validate="1:1")
    assert len(both) == len(expected) == 2 * sum([8, 3, 1])
    assert_close(both["value"], both["mean"])
    assert (both["n_tasks"] == 3).all()
    norm = mart[mart["metric"] == "acc_norm"]
    assert (norm["n_tasks"] == 2).all() and len(norm) == len(expected)


def test_task_spread_ranks_tasks_by_range(warehouse):
    path, results = warehouse
    scores = set_scores(results)
    expected = spread_stats(scores[scores["kind"] == "task"], SOURCE_KEYS)
    expected["range"] = expected["max"] - expected["min"]
    expected["rank"] = (expected.groupby(["variant", "calibration_source", "n_samples", "metric"], dropna=False)
                        ["range"].rank(method="min", ascending=False))
    mart = read_table(path, "select * from mart_task_spread").rename(columns={"task": "eval_dataset"})
    if expected.empty:  # the quantity study has no tasks
        assert mart.empty
        return
    both = merged(mart, expected, SOURCE_KEYS)
    assert_close(both["range_value"], both["range"])
    assert (both["sensitivity_rank"] == both["rank"]).all()


def test_average_distribution_matches_pandas(warehouse):
    path, results = warehouse
    scores = set_scores(results)
    scores = scores[scores["kind"].isin(["task_average", "perplexity"])]
    groups = scores.groupby(ALL_SETS_KEYS, dropna=False)
    expected = groups["value"].agg(["count", "mean", "std", "min", "median", "max"]).reset_index()
    expected["q1"] = groups["value"].quantile(0.25).to_numpy()
    expected["q3"] = groups["value"].quantile(0.75).to_numpy()
    expected["sources"] = groups["calibration_source"].nunique().to_numpy()
    higher = scores["kind"] == "task_average"
    goodness = scores["value"].where(higher, -scores["value"])
    per_set = goodness.groupby([scores[k] for k in ALL_SETS_KEYS], dropna=False)
    expected["best"] = scores.loc[per_set.idxmax(), "calib"].to_numpy()
    expected["worst"] = scores.loc[per_set.idxmin(), "calib"].to_numpy()
    both = merged(read_table(path, "select * from mart_averages"), expected, ALL_SETS_KEYS)
    for column, truth in [("mean_value", "mean"), ("min_value", "min"), ("q1_value", "q1"),
                          ("median_value", "median"), ("q3_value", "q3"), ("max_value", "max")]:
        assert_close(both[column], both[truth])
    assert_close(both["std_value"].fillna(-1), both["std"].fillna(-1))  # the sample std (ddof 1), NULL for one set
    assert (both["n_sources"] == both["sources"]).all()
    assert (both["best_calib"] == both["best"]).all() and (both["worst_calib"] == both["worst"]).all()


def test_coefficients_of_variation_match_pandas(warehouse):
    path, results = warehouse
    scores = set_scores(results)
    scores = scores[scores["kind"].isin(["task", "task_average", "perplexity"])]
    expected = spread_stats(scores, [*SOURCE_KEYS, "kind"])
    expected["cv"] = expected["std"] / expected["mean"].abs()
    setting = ["variant", "calibration_source", "n_samples"]
    for kind in ["perplexity", "task"]:
        maxima = expected[expected["kind"] == kind].groupby(setting, dropna=False)["cv"].max().rename(f"{kind}_max")
        expected = expected.merge(maxima.reset_index(), on=setting, how="left")
    both = merged(read_table(path, "select * from mart_ppl_vs_task"), expected, SOURCE_KEYS)
    assert_close(both["cv_expected"].fillna(-1), both["cv"].fillna(-1))
    assert_close(both["perplexity_cv_max"].fillna(-1), both["perplexity_max"].fillna(-1))
    assert_close(both["task_cv_max"].fillna(-1), both["task_max"].fillna(-1))


def test_source_ranking_counts_match_a_brute_force_count(warehouse):
    path, results = warehouse
    scores = set_scores(results).fillna({"n_samples": -1})
    criteria = scores[((scores["kind"] == "task") & (scores["metric"] == "acc")) | (scores["kind"] == "perplexity")]
    keys = ["variant", "n_samples", "eval_dataset", "metric", "kind", "calibration_source"]
    means = criteria.groupby(keys)["value"].mean()
    best, worst, n_criteria, discriminating = Counter(), Counter(), Counter(), Counter()
    for (variant, n_samples, _, _, kind), per_source in means.groupby(level=[0, 1, 2, 3, 4]):
        goodness = per_source.droplevel([0, 1, 2, 3, 4]) * (1 if kind == "task" else -1)
        differ = len(goodness) > 1 and goodness.max() - goodness.min() > 1e-9 * goodness.abs().max()
        for source, good in goodness.items():
            key = (variant, n_samples, source)
            n_criteria[key] += 1
            discriminating[key] += differ
            best[key] += differ and good == goodness.max()
            worst[key] += differ and good == goodness.min()
    mart = read_table(path, "select * from mart_ranking").fillna({"n_samples": -1})
    assert len(mart) == len(n_criteria)
    for row in mart.itertuples():
        key = (row.variant, row.n_samples, row.calibration_source)
        assert (row.n_criteria, row.n_discriminating, row.best_count, row.worst_count) == (
            n_criteria[key], discriminating[key], best[key], worst[key])


def test_source_ranking_orders_by_task_average(grid):
    path, results = grid
    scores = set_scores(results)
    averages = (scores[(scores["kind"] == "task_average") & (scores["metric"] == "acc")]
                .groupby(["variant", "calibration_source"])["value"].mean())
    mart = read_table(path, "select * from mart_ranking order by variant, overall_rank")
    for variant, ranking in mart.groupby("variant"):
        assert list(ranking["calibration_source"]) == list(averages[variant].sort_values(ascending=False).index)
        assert_close(ranking["task_average"], averages[variant][ranking["calibration_source"]].to_numpy())


def test_sample_count_curve_follows_the_quantity_study():
    path, results, completed = built_warehouse("quantity")
    assert completed.returncode == 0
    mart = read_table(path, "select * from mart_size_curve where eval_dataset = 'wikitext2' order by n_samples")
    assert list(mart["n_samples"]) == QUANTITY_COUNTS and (mart["n_sets"] == 2).all()
    expected = (results[results["calib"].notna() & (results["eval_dataset"] == "wikitext2")
                        & (results["metric"] == "perplexity")].groupby("n_samples")["value"].agg(["mean", "std"]))
    assert_close(mart["mean_value"], expected["mean"])
    assert_close(mart["std_value"], expected["std"])
    assert_close(mart["relative_to_largest"], expected["mean"] / expected["mean"].iloc[-1])


def test_variance_decomposition_matches_one_way_anova(grid):
    from scipy.stats import f_oneway

    path, results = grid
    scores = set_scores(results)
    mart = read_table(path, "select * from mart_variance")
    assert len(mart) == len(scores.groupby(ALL_SETS_KEYS, dropna=False))
    for row in mart.itertuples():
        group = scores[(scores["variant"] == row.variant) & (scores["eval_dataset"] == row.eval_dataset)
                       & (scores["metric"] == row.metric)]
        by_source = [g["value"].to_numpy() for _, g in group.groupby("calibration_source")]
        total = group["value"].to_numpy()
        assert row.ss_total == pytest.approx(((total - total.mean()) ** 2).sum())
        assert row.ss_within == pytest.approx(sum(((v - v.mean()) ** 2).sum() for v in by_source))
        assert row.f_statistic == pytest.approx(f_oneway(*by_source).statistic)  # 3 sources, 12 sets: df > 0


def _exact_bootstrap_quantiles(values: np.ndarray, probabilities: list[float]) -> tuple[list[float], float]:
    """Quantiles and std of the exact bootstrap distribution of the mean: every multiset of n draws from
    the n values, weighted by its multinomial probability."""
    n = len(values)
    draw_means, draw_weights = [], []
    for draw in itertools.combinations_with_replacement(range(n), n):
        counts = Counter(draw).values()
        draw_weights.append(math.factorial(n) / math.prod(math.factorial(c) for c in counts) / n ** n)
        draw_means.append(values[list(draw)].mean())
    order = np.argsort(draw_means)
    means, weights = np.asarray(draw_means)[order], np.asarray(draw_weights)[order]
    std = math.sqrt(np.dot((means - np.dot(means, weights)) ** 2, weights))
    return [float(means[np.searchsorted(np.cumsum(weights), p)]) for p in probabilities], std


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution(grid):
    path, results = grid
    mart = read_table(path, "select * from mart_bootstrap")
    assert set(mart["replicates"]) == {1000} and set(mart["confidence"]) == {0.95}
    wide = mart[(mart["calibration_source"] == "src-a") & (mart["kind"] == "perplexity")]
    assert len(wide) == 4 and (wide["n_sets"] == 8).all()
    for row in wide.itertuples():
        values = results[(results["variant"] == row.variant) & (results["calibration_source"] == "src-a")
                         & (results["eval_dataset"] == row.eval_dataset) & (results["metric"] == row.metric)]["value"]
        (low, high), std = _exact_bootstrap_quantiles(values.to_numpy()[:8], [0.025, 0.975])
        # Monte-Carlo error of a 2.5% quantile from 1,000 replicates: about 0.09 bootstrap std
        assert abs(row.ci_low - low) < 0.4 * std and abs(row.ci_high - high) < 0.4 * std
        assert row.ci_high - row.ci_low > 2 * std  # the exact 95% interval is about 3.9 std wide
    single = mart[mart["n_sets"] == 1]  # nothing to resample: no interval
    assert len(single) > 0 and single["ci_low"].isna().all() and single["ci_high"].isna().all()


def _md5_bootstrap_interval(values: np.ndarray, replicates: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The documented resampling rule, in Python: draw d of replicate r takes the set numbered
    int(md5('seed:n:r:d')[:15], 16) % n."""
    n = len(values)
    draws = np.array([[int(hashlib.md5(f"{seed}:{n}:{r}:{d}".encode()).hexdigest()[:15], 16) % n for d in range(n)]
                      for r in range(replicates)])
    return tuple(np.quantile(values[draws].mean(axis=1), [0.025, 0.975]))


def test_bootstrap_follows_its_documented_resampling_rule(grid):
    path, results = grid
    mart = read_table(path, "select * from mart_bootstrap where calibration_source = 'src-b' and metric = 'acc'")
    assert len(mart) > 0
    for row in mart.itertuples():
        scores = set_scores(results)
        values = scores[(scores["variant"] == row.variant) & (scores["calibration_source"] == "src-b")
                        & (scores["eval_dataset"] == row.eval_dataset) & (scores["metric"] == "acc")]
        values = values.sort_values("calib")["value"].to_numpy()
        assert (row.ci_low, row.ci_high) == pytest.approx(_md5_bootstrap_interval(values), rel=1e-12)


def test_bootstrap_over_all_sources_pools_every_calibration_set(grid):
    path, results = grid
    pooled = read_table(path, "select * from mart_bootstrap where calibration_source = '(all)' "
                              "and eval_dataset = 'task_average' and metric = 'acc' order by variant")
    averages = (results[results["calib"].notna() & (results["metric"] == "acc")]
                .groupby(["variant", "calib"])["value"].mean())
    assert list(pooled["variant"]) == sorted(averages.index.unique("variant"))
    for row in pooled.itertuples():
        values = averages[row.variant].sort_index().to_numpy()
        assert row.n_sets == len(values) == 12 and row.mean_value == pytest.approx(values.mean())
        assert (row.ci_low, row.ci_high) == pytest.approx(_md5_bootstrap_interval(values), rel=1e-12)


def test_retention_against_the_dense_model(warehouse):
    path, results = warehouse
    dense = results[results["method"] == "dense"].set_index(["eval_dataset", "metric"])["value"]
    for metric in ["acc", "acc_norm"]:
        if metric in dense.index.get_level_values("metric"):
            dense[("task_average", metric)] = dense.xs(metric, level="metric").mean()
    scores = set_scores(results)
    scores = scores[scores["kind"].isin(["task", "task_average", "perplexity"])].copy()
    scores["dense"] = [dense[(d, m)] for d, m in zip(scores["eval_dataset"], scores["metric"])]
    scores["retention"] = np.where(scores["kind"] == "perplexity", scores["dense"] / scores["value"],
                                   scores["value"] / scores["dense"])
    expected = scores.groupby(SOURCE_KEYS, dropna=False)["retention"].agg(["mean", "min", "max"]).reset_index()
    mart = read_table(path, "select * from mart_retention")
    both = merged(mart[mart["uses_calibration"]], expected, SOURCE_KEYS)
    assert_close(both["mean_retention"], both["mean"])
    assert_close(both["min_retention"], both["min"])
    assert_close(both["max_retention"], both["max"])
    free = mart[~mart["uses_calibration"]]
    rtn = results[(results["method"] == "rtn") & (results["eval_dataset"] == "wikitext2")]
    assert set(free["variant"]) == set(rtn["variant"])
    if len(rtn):
        row = free[free["eval_dataset"] == "wikitext2"].iloc[0]
        assert row["mean_retention"] == pytest.approx(dense[("wikitext2", "perplexity")] / rtn["value"].iloc[0])


@pytest.mark.parametrize("test_name, tamper", [
    ("consistent_spread_mart_spread_",
     "update mart_spread set std_value = range_value + 1 where n_sets = 3"),
    ("consistent_spread_mart_spread_",
     "update mart_spread set range_value = -1 where n_sets = 8"),
    ("ordered_interval_mart_bootstra_*",  # dbt shortens long test names with a hash
     "update mart_bootstrap set ci_high = max_value + 1 where n_sets = 3"),
    ("variance_decomposition_adds_up", "update mart_variance set ss_between = ss_between + 1"),
])
def test_custom_data_tests_catch_inconsistent_rows(grid, tmp_path, test_name, tamper):
    import duckdb

    path, _ = grid
    compiled = next(path.parent.glob(f"target/compiled/**/{test_name}.sql"))
    copy = tmp_path / path.name  # compiled SQL names the database after the file
    shutil.copy(path, copy)
    with duckdb.connect(str(copy)) as connection:
        assert connection.sql(compiled.read_text()).fetchall() == []
        connection.execute(tamper)
        assert len(connection.sql(compiled.read_text()).fetchall()) > 0


def test_source_spread_matches_pandas(warehouse):
    """mart_src_spread: per (variant, source), over every set of the source (sample counts pooled), the
    held-out perplexity averaged over the evaluation datasets of each set and each task's acc."""
    path, results = warehouse
    scores = set_scores(results)
    keys = ["variant", "calibration_source"]
    perplexity = (scores[scores["kind"] == "perplexity"].groupby([*keys, "calib"])["value"].mean().reset_index()
                  .assign(eval_dataset="perplexity_average", metric="perplexity"))
    tasks = scores[(scores["kind"] == "task") & (scores["metric"] == "acc")]
    per_set = pd.concat([perplexity, tasks[[*keys, "calib", "eval_dataset", "metric", "value"]]], ignore_index=True)
    expected = spread_stats(per_set, [*keys, "eval_dataset", "metric"])
    expected["sources_sets"] = expected.merge(per_set.groupby(keys)["calib"].nunique().rename("n").reset_index(),
                                              on=keys)["n"].to_numpy()
    both = merged(read_table(path, "select * from mart_src_spread"), expected, [*keys, "eval_dataset", "metric"])
    assert (both["n_sets"] == both["count"]).all() and (both["source_sets"] == both["sources_sets"]).all()
    assert_close(both["mean_value"], both["mean"])
    assert_close(both["std_value"].fillna(-1), both["std"].fillna(-1))
    assert_close(both["range_value"], both["max"] - both["min"])
    assert_close(both["cv"].fillna(-1), (both["std"] / both["mean"].abs()).fillna(-1))
    if results["n_samples"].nunique() > 1:  # the quantity study: one group holds every sample count
        assert set(both["n_sets"]) == {2 * len(QUANTITY_COUNTS)}


def test_every_model_and_every_column_is_described(grid):
    """Every model of the manifest, and every column of each relation the build made, has a description
    (schema.yml files; shared ones in models/docs.md)."""
    import json

    path, _ = grid
    manifest = json.loads((path.parent / "target" / "manifest.json").read_text())  # written by that dbt build
    models = {node["name"]: node for node in manifest["nodes"].values() if node["resource_type"] == "model"}
    columns = read_table(path, "select table_name, column_name from information_schema.columns")
    built = columns[columns["table_name"].isin(models)]
    assert set(built["table_name"]) == set(models)  # every model was built (the views too)
    undescribed = [name for name, node in models.items() if not node["description"].strip()]
    undescribed += [f"{table}.{column}" for table, column in built.itertuples(index=False)
                    if not models[table]["columns"].get(column, {}).get("description", "").strip()]
    assert undescribed == []
