"""Selection strategies: choose n_samples rows out of a larger candidate pool.

Each function returns candidate indices in the order they were chosen; all are deterministic (ties go to
the lower index; k-means is seeded). The model-based ones take precomputed measurements (scoring.py),
so that the library stays testable on hand-made numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def _check(n_select: int, n_candidates: int) -> None:
    if not 1 <= n_select <= n_candidates:
        raise ValueError(f"cannot select {n_select} of {n_candidates} candidates; need 1 <= n <= candidates")


def zipcal_scores(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """ZipCal lexical diversity: sum over a row's distinct tokens of 1 / (rows of the pool containing it)."""
    distinct = [set(row) for row in rows]
    frequency = Counter(token for tokens in distinct for token in tokens)
    return np.array([sum(1.0 / frequency[token] for token in tokens) for tokens in distinct])


def top_k(scores: Sequence[float] | np.ndarray, n_select: int, *, largest: bool = True) -> list[int]:
    """Indices of the n best scores; ties keep the lower index first."""
    values = np.asarray(scores, dtype=np.float64)
    _check(n_select, len(values))
    keys = -values if largest else values
    return [int(i) for i in np.lexsort((np.arange(len(values)), keys))[:n_select]]


def select_zipcal(rows: Sequence[Sequence[int]], n_select: int) -> list[int]:
    return top_k(zipcal_scores(rows), n_select)


def select_least_perplexity(perplexities: Sequence[float] | np.ndarray, n_select: int) -> list[int]:
    return top_k(perplexities, n_select, largest=False)


def select_coverage(rows: Sequence[Sequence[int]], n_select: int) -> list[int]:
    """Greedy maximum coverage of token types: each pick adds the most types not yet covered (ties: lower
    index). Lazy evaluation: a candidate's gain only shrinks as coverage grows, so a stale gain is an upper
    bound and most candidates are never re-scored."""
    import heapq

    _check(n_select, len(rows))
    distinct = [set(row) for row in rows]
    heap = [(-len(tokens), index) for index, tokens in enumerate(distinct)]
    heapq.heapify(heap)
    covered: set[int] = set()
    chosen: list[int] = []
    while len(chosen) < n_select:
        _, index = heapq.heappop(heap)
        fresh = (-len(distinct[index] - covered), index)
        if not heap or fresh <= heap[0]:
            chosen.append(index)
            covered |= distinct[index]
        else:
            heapq.heappush(heap, fresh)
    return chosen


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, iterations: int = 25) -> np.ndarray:
    """Lloyd's k-means with k-means++ initialisation; returns the [k, dim] centroids."""
    points = np.asarray(points, dtype=np.float64)
    _check(k, len(points))
    rng = np.random.default_rng(seed)
    chosen = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        distances = _squared_distances(points, np.array(chosen)).min(1)
        total = distances.sum()
        index = rng.choice(len(points), p=distances / total) if total > 0 else rng.integers(len(points))
        chosen.append(points[index])
    centroids = np.array(chosen)
    for _ in range(iterations):
        labels = _squared_distances(points, centroids).argmin(1)
        updated = np.array([points[labels == c].mean(0) if (labels == c).any() else centroids[c] for c in range(k)])
        if np.allclose(updated, centroids):
            break
        centroids = updated
    return centroids


def _squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    squared = (points**2).sum(1)[:, None] - 2 * points @ centroids.T + (centroids**2).sum(1)[None, :]
    return np.maximum(squared, 0.0)


def select_activation_kmeans(embeddings: np.ndarray, n_select: int, *, seed: int = 0,
                             iterations: int = 25) -> list[int]:
    """One candidate per k-means cluster (k = n_select): the one nearest its centroid, never twice."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    centroids = kmeans(embeddings, n_select, seed=seed, iterations=iterations)
    distances = _squared_distances(embeddings, centroids)
    chosen: list[int] = []
    for cluster in range(n_select):
        for index in np.lexsort((np.arange(len(embeddings)), distances[:, cluster])):
            if int(index) not in chosen:
                chosen.append(int(index))
                break
    return chosen


def select(selection, rows: Sequence[Sequence[int]], n_select: int, *, perplexities=None, embeddings=None,
           seed: int = 0) -> list[int]:
    """Dispatch on a specs.SelectionSpec; model-based kinds need their measurements."""
    kind = selection.kind
    if kind == "zipcal":
        return select_zipcal(rows, n_select)
    if kind == "coverage":
        return select_coverage(rows, n_select)
    if kind == "least_perplexity":
        if perplexities is None:
            raise ValueError("least_perplexity selection needs the candidates' perplexities")
        return select_least_perplexity(perplexities, n_select)
    if kind == "activation_kmeans":
        if embeddings is None:
            raise ValueError("activation_kmeans selection needs the candidates' hidden-state embeddings")
        return select_activation_kmeans(embeddings, n_select, seed=seed, iterations=selection.iterations)
    raise ValueError(f"unknown selection kind {kind!r}")
