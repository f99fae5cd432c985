"""Magnitude pruning baseline, and the mask selection shared with Wanda.

Unstructured: one |W| threshold for the whole matrix (exactly floor(sparsity * numel) entries pruned).
N:M: in each row, within every m consecutive input columns, prune the n entries of lowest |W|.
"""

from __future__ import annotations

import functools
import time

import torch

from .config import DataFree, MagnitudeConfig, check_finite
from .packing import packed
from .result import CompressedLinear

# Ranks by pairwise comparison beat a sort on the SparseGPT loop's small calls (rows x m scores, every m
# columns); on whole matrices (Wanda, magnitude: once each) their size^2 temporaries fragment the heap.
SMALL_GROUP, SMALL_CALL = 8, 2**16


def lowest_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep-mask of the last dim: prune the floor(fraction * size) lowest scores in each row.

    Ties are broken by position (as a stable sort would), so the pruned count is exact.
    """
    size = scores.shape[-1]
    count = int(size * fraction)
    if not count:
        return torch.ones_like(scores, dtype=torch.bool)
    if size <= SMALL_GROUP and scores.numel() <= SMALL_CALL:
        return stable_ranks(scores) >= count
    return _above_kth(scores, count)


def _above_kth(scores: torch.Tensor, count: int) -> torch.Tensor:
    """`lowest_mask` by selection, not sorting: what a stable sort's first `count` of each row are, namely
    every score below the count-th lowest and the earliest of the scores equal to it (half the time of
    a sort: docs/benchmarks.md)."""
    threshold = scores.kthvalue(count, dim=-1, keepdim=True).values
    pruned = scores <= threshold
    if not bool((pruned.sum(dim=-1) > count).any()):  # no row has more ties at its threshold than it prunes
        return ~pruned
    below = scores < threshold
    ties = scores == threshold
    return ~(below | (ties & (ties.cumsum(dim=-1) <= count - below.sum(dim=-1, keepdim=True))))


def stable_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each score's position in a stable ascending sort of its last dim: how many scores are lower, plus
    how many equal ones come before it. O(size^2) comparisons, no sort: for the small groups of N:M
    masks, which the SparseGPT column loop builds every m columns."""
    this, other = scores.unsqueeze(-1), scores.unsqueeze(-2)  # [..., i, 1] against [..., 1, j]
    # score j counts against score i when lower, or when equal and before it (j < i)
    return torch.where(_before(scores.shape[-1], scores.device), other <= this, other < this).sum(dim=-1)


@functools.cache
def _before(size: int, device: torch.device) -> torch.Tensor:
    """[i, j] -> j < i."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril_(-1)


@functools.cache
def _earlier(size: int, device: torch.device) -> torch.Tensor:
    """[j, k, 1] -> j < k: `_before` transposed, shaped to broadcast over the rows of an N:M group."""
    return _before(size, device).T[:, :, None].contiguous()


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask of scores [rows, cols]: prune the n lowest of every m consecutive columns in each row."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    return lowest_mask(groups, n / m).reshape(rows, cols)


def nm_keep_columns(scores_t: torch.Tensor, n: int, out: torch.Tensor) -> torch.Tensor:
    """Keep-mask of one N:M group given transposed, scores_t [m, rows]: in each column, the n lowest
    (ties by position) are pruned; written into `out` [m, rows]. The SparseGPT loop calls this every m
    columns, where each op's fixed cost dominates: one comparison tensor [m, m, rows] and a uint8 count
    over its leading dim (a bool count over a trailing dim of size m is slower: docs/benchmarks.md)."""
    m = scores_t.shape[0]
    if m > SMALL_GROUP:  # the [m, m, rows] comparison would outgrow a sort
        return out.copy_(nm_mask(scores_t.T, n, m).T)
    lower, this = scores_t.unsqueeze(1), scores_t.unsqueeze(0)  # [j, 1, rows] against [1, k, rows]
    # score j counts below score k when lower, or when equal and before it (j < k)
    below = torch.where(_earlier(m, scores_t.device), lower <= this, lower < this)
    return torch.ge(below.view(torch.uint8).sum(dim=0, dtype=torch.uint8), n, out=out)


def apply_mask(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pruned weight with +0.0 (never -0.0) at pruned entries, so a reload from kept values is bit-exact."""
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))


class Magnitude(DataFree):
    config: MagnitudeConfig

    def compress(self, weight: torch.Tensor) -> CompressedLinear:
        start = time.perf_counter()
        w = weight.detach().float()
        check_finite("weight", w)
        cfg = self.config
        if cfg.sparsity is not None:
            mask = lowest_mask(w.abs().reshape(1, -1), cfg.sparsity).reshape(w.shape)
        else:
            assert cfg.n is not None and cfg.m is not None  # N:M (the config holds sparsity or n and m)
            mask = nm_mask(w.abs(), cfg.n, cfg.m)
        return CompressedLinear(
            weight=apply_mask(w, mask), packed_mask=packed(mask), info={"seconds": time.perf_counter() - start}
        )
