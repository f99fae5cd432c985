"""Selection strategies against hand computations on tiny pools."""

import numpy as np
import pytest

from calib_assets.calibration.selection import (
    kmeans,
    select,
    select_activation_kmeans,
    select_coverage,
    select_least_perplexity,
    select_zipcal,
    zipcal_scores,
)
from calib_assets.calibration.specs import parse_selection


def test_zipcal_scores_by_hand():
    rows = [[1, 2], [2, 3, 3], [3, 4, 5]]
    # rows containing each token: 1:1, 2:2, 3:2, 4:1, 5:1 (a repeat inside a row counts once)
    assert zipcal_scores(rows).tolist() == [1 + 0.5, 0.5 + 0.5, 0.5 + 1 + 1]
    assert select_zipcal(rows, 2) == [2, 0]


def test_coverage_is_greedy_on_new_types():
    rows = [[1, 2, 3], [3, 4], [1, 2], [5, 6, 7, 8]]
    # 4 new types, then 3 new, then {4} beats nothing new
    assert select_coverage(rows, 3) == [3, 0, 1]


def test_least_perplexity_breaks_ties_by_index():
    assert select_least_perplexity([5.0, 2.0, 9.0, 2.0], 2) == [1, 3]


def test_activation_kmeans_picks_the_medoid_of_each_cluster():
    square = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0.5, 0.5]], dtype=float)
    points = np.concatenate([square, square + 100])
    chosen = select_activation_kmeans(points, 2, seed=3)
    assert sorted(chosen) == [4, 9]
    centroids = kmeans(points, 2, seed=3)
    assert sorted(map(tuple, np.round(centroids, 6))) == [(0.5, 0.5), (100.5, 100.5)]


def test_kmeans_never_returns_a_candidate_twice():
    points = np.zeros((6, 3))  # every candidate nearest every centroid
    assert sorted(select_activation_kmeans(points, 4)) == [0, 1, 2, 3]


def test_selection_is_deterministic_and_sized():
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 50, size=20).tolist() for _ in range(40)]
    embeddings = rng.normal(size=(40, 8))
    for kind in ("zipcal", "coverage", "activation_kmeans", "least_perplexity"):
        spec = parse_selection(kind)
        extra = {"embeddings": embeddings, "perplexities": rng.uniform(2, 9, 40)}
        first = select(spec, rows, 7, seed=1, **extra)
        assert first == select(spec, rows, 7, seed=1, **extra)
        assert len(first) == len(set(first)) == 7


def test_model_selection_without_measurements_is_refused():
    with pytest.raises(ValueError, match="perplexities"):
        select(parse_selection("least_perplexity"), [[1]], 1)


def test_cannot_select_more_than_the_pool():
    with pytest.raises(ValueError, match="cannot select 3 of 2"):
        select_zipcal([[1], [2]], 3)


def test_lazy_coverage_equals_plain_greedy():
    rng = np.random.default_rng(4)
    rows = [rng.integers(0, 60, size=rng.integers(1, 15)).tolist() for _ in range(80)]
    covered, expected = set(), []
    for _ in range(20):  # brute force: rescore every remaining candidate each round
        best = min((i for i in range(len(rows)) if i not in expected), key=lambda i: (-len(set(rows[i]) - covered), i))
        expected.append(best)
        covered |= set(rows[best])
    assert select_coverage(rows, 20) == expected
