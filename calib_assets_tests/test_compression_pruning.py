"""Magnitude and Wanda masks against brute-force selections written with python lists."""

import math

import pytest
import torch

from calib_assets.compression import Magnitude, MagnitudeConfig, Wanda, WandaConfig


def _lowest_positions(values: list[float], count: int) -> set[int]:
    return set(sorted(range(len(values)), key=lambda j: values[j])[:count])


def _brute_row_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    rows, cols = scores.shape
    mask = torch.ones(rows, cols, dtype=torch.bool)
    for r in range(rows):
        for j in _lowest_positions(scores[r].tolist(), int(cols * fraction)):
            mask[r, j] = False
    return mask


def _brute_nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    rows, cols = scores.shape
    mask = torch.ones(rows, cols, dtype=torch.bool)
    for r in range(rows):
        for start in range(0, cols, m):
            for j in _lowest_positions(scores[r, start : start + m].tolist(), n):
                mask[r, start + j] = False
    return mask


def _wanda_inputs(cols: int) -> list[torch.Tensor]:
    torch.manual_seed(1)
    scale = torch.rand(cols) * 4  # features of very different magnitude
    return [torch.randn(2, 5, cols) * scale, torch.randn(3, 7, cols) * scale]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_unstructured_is_a_global_threshold(sparsity):
    torch.manual_seed(0)
    w = torch.randn(12, 40)
    result = Magnitude(MagnitudeConfig(sparsity=sparsity), w.shape).compress(w)
    count = int(w.numel() * sparsity)
    flat = w.abs().reshape(-1).tolist()
    expected = torch.ones(w.numel(), dtype=torch.bool)
    for j in _lowest_positions(flat, count):
        expected[j] = False
    assert torch.equal(result.unpacked_mask(), expected.reshape(w.shape))
    assert int((~result.unpacked_mask()).sum()) == count
    assert torch.equal(result.weight, torch.where(expected.reshape(w.shape), w, 0.0))


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_magnitude_nm(n, m):
    torch.manual_seed(0)
    w = torch.randn(10, 32)
    result = Magnitude(MagnitudeConfig(n=n, m=m), w.shape).compress(w)
    assert torch.equal(result.unpacked_mask(), _brute_nm_mask(w.abs(), n, m))
    pruned_per_group = (~result.unpacked_mask()).reshape(10, 32 // m, m).sum(dim=-1)
    assert (pruned_per_group == n).all()


def _wanda_metric(w: torch.Tensor, batches: list[torch.Tensor]) -> torch.Tensor:
    """|W_ij| * ||X_j||, with the squared norm averaged over all tokens, computed feature by feature."""
    tokens = torch.cat([b.reshape(-1, w.shape[1]) for b in batches]).double()
    norms = [math.sqrt(sum(v * v for v in tokens[:, j].tolist()) / tokens.shape[0]) for j in range(w.shape[1])]
    return w.abs().double() * torch.tensor(norms, dtype=torch.float64)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
def test_wanda_unstructured_per_row(sparsity):
    torch.manual_seed(0)
    w = torch.randn(9, 24)
    batches = _wanda_inputs(24)
    wanda = Wanda(WandaConfig(sparsity=sparsity), w.shape)
    for batch in batches:
        wanda.add_batch(batch)
    result = wanda.compress(w)
    assert torch.equal(result.unpacked_mask(), _brute_row_mask(_wanda_metric(w, batches), sparsity))
    assert ((~result.unpacked_mask()).sum(dim=1) == int(24 * sparsity)).all()  # exact per row
    assert torch.equal(result.weight, torch.where(result.unpacked_mask(), w, 0.0))
    # the activations matter: the mask differs from pure per-row magnitude
    assert not torch.equal(result.unpacked_mask(), _brute_row_mask(w.abs(), sparsity))


def test_wanda_two_of_four():
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    batches = _wanda_inputs(32)
    wanda = Wanda(WandaConfig(n=2, m=4), w.shape)
    for batch in batches:
        wanda.add_batch(batch)
    result = wanda.compress(w)
    assert torch.equal(result.unpacked_mask(), _brute_nm_mask(_wanda_metric(w, batches), 2, 4))
    assert (result.unpacked_mask().reshape(8, 8, 4).sum(dim=-1) == 2).all()
    assert float((result.weight == 0).float().mean()) == 0.5


def test_wanda_without_data_or_with_nan_fails_clearly():
    with pytest.raises(RuntimeError, match="add_batch"):
        Wanda(WandaConfig(n=2, m=4), (4, 8)).compress(torch.randn(4, 8))
    bad = torch.randn(3, 8)
    bad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="calibration input"):
        Wanda(WandaConfig(n=2, m=4), (4, 8)).add_batch(bad)


@pytest.mark.parametrize("size, fraction", [(4, 0.5), (8, 0.5), (8, 0.25), (4, 0.75)])
def test_small_group_ranks_equal_a_stable_sort(size, fraction):
    """The comparison path of lowest_mask against argsort(stable) itself, with many exact ties."""
    from calib_assets.compression.magnitude import lowest_mask, stable_ranks

    gen = torch.Generator().manual_seed(size)
    scores = torch.randint(0, 4, (500, 3, size), generator=gen).float()  # ties in most groups; a small call
    order = torch.sort(scores, dim=-1, stable=True).indices
    expected_ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(size).expand_as(order))
    assert torch.equal(stable_ranks(scores), expected_ranks)
    count = int(size * fraction)
    mask = lowest_mask(scores, fraction)
    assert torch.equal(mask, expected_ranks >= count)
    assert (mask.logical_not().sum(dim=-1) == count).all()


@pytest.mark.parametrize("shape, levels", [((300, 576), 5), ((300, 576), 10**6), ((1, 70_000), 7), ((4, 129), 2)])
@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.9])
def test_lowest_mask_by_selection_equals_a_stable_sort(shape, levels, fraction):
    """The selection path of lowest_mask (rows longer than a small group: Wanda's rows, SparseGPT's and
    magnitude's flattened blocks) against the plain stable sort, with and without exact ties."""
    from calib_assets.compression.magnitude import lowest_mask

    gen = torch.Generator().manual_seed(levels + shape[1])
    scores = torch.randint(0, levels, shape, generator=gen).float() / levels
    count = int(shape[1] * fraction)
    order = torch.sort(scores, dim=-1, stable=True).indices
    expected = torch.ones_like(scores, dtype=torch.bool).scatter_(-1, order[:, :count], False)
    mask = lowest_mask(scores, fraction)
    assert torch.equal(mask, expected)
    assert (mask.logical_not().sum(dim=-1) == count).all()


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 4), (4, 8), (2, 8), (5, 16)])
def test_transposed_nm_group_keep_equals_a_stable_sort(n, m):
    """SparseGPT's per-group N:M mask (scores given as [m, rows]) against argsort(stable) itself, with
    many exact ties; m = 16 takes the sorting fallback."""
    from calib_assets.compression.magnitude import nm_keep_columns

    gen = torch.Generator().manual_seed(m + n)
    scores_t = torch.randint(0, 3, (m, 700), generator=gen).float()  # ties in most columns
    order = torch.sort(scores_t, dim=0, stable=True).indices
    expected = torch.ones_like(scores_t, dtype=torch.bool).scatter_(0, order[:n], False)
    out = torch.zeros(m + 2, 700, dtype=torch.bool)[1 : m + 1]  # a slice of a larger mask, as in the loop
    nm_keep_columns(scores_t, n, out=out)
    assert torch.equal(out, expected)
    assert ((~out).sum(dim=0) == n).all()
