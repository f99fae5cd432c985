"""GPTQ against RTN, against a naive unblocked implementation, and on broken Hessians."""

import pytest
import torch

from calib_assets.compression import GPTQ, RTN, GPTQConfig, RTNConfig
from calib_assets.compression.quantizer import dequantize, fit_params, quantize


def _correlated_inputs(cols: int, tokens: int = 512, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, cols, generator=gen)
    mixing = torch.randn(cols, cols, generator=gen) / cols**0.5 + torch.eye(cols) * 0.1
    return z @ mixing


def _gptq(config, w, x, chunks=4):
    gptq = GPTQ(config, w.shape)
    for part in x.chunk(chunks):
        gptq.add_batch(part[None])  # [batch, tokens, features]
    return gptq.compress(w)


def _output_error(w, q, x):
    return float(torch.linalg.norm(x @ w.T - x @ q.T))


def _levels_per_group(weight, group):
    rows, cols = weight.shape
    return max(
        weight[r, s : s + group].unique().numel() for r in range(rows) for s in range(0, cols, group)
    )


@pytest.mark.parametrize("bits, group", [(3, 16), (4, 32), (3, None), (2, 16)])
def test_gptq_beats_rtn_on_correlated_inputs(bits, group):
    torch.manual_seed(0)
    w = torch.randn(24, 64)
    x = _correlated_inputs(64)
    gptq = _gptq(GPTQConfig(bits=bits, group_size=group, blocksize=16), w, x)
    rtn = RTN(RTNConfig(bits=bits, group_size=group), w.shape).compress(w)
    assert _output_error(w, gptq.weight, x) < 0.9 * _output_error(w, rtn.weight, x)
    assert _levels_per_group(gptq.weight, group or 64) <= 2**bits
    assert torch.equal(dequantize(gptq.codes, gptq.scales, gptq.zeros, group), gptq.weight)
    assert gptq.info["damping_retries"] == 0


def _naive_gptq(w, H, bits, group, percdamp=0.01):
    """Textbook OBQ order-fixed variant in float64: after fixing column i, update the later columns with
    the inverse Hessian of the not-yet-quantized columns, then eliminate column i from that inverse."""
    w = w.double().clone()
    H = H.double().clone()
    cols = w.shape[1]
    H += percdamp * torch.diag(H).mean() * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    out = torch.zeros_like(w)
    for i in range(cols):
        if i % group == 0:
            scale, zero = fit_params(w[:, i : i + group].float(), bits)
        q = dequantize(quantize(w[:, i : i + 1].float(), scale, zero, bits), scale, zero, None).double()
        out[:, i : i + 1] = q
        err = (w[:, i : i + 1] - q) / Hinv[i, i]
        w[:, i + 1 :] -= err @ Hinv[i : i + 1, i + 1 :]
        Hinv = Hinv - Hinv[:, i : i + 1] @ Hinv[i : i + 1, :] / Hinv[i, i]
    return out.float()


@pytest.mark.parametrize("blocksize", [8, 128])
def test_gptq_matches_naive_sequential_obq(blocksize):
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    x = _correlated_inputs(32, seed=3)
    result = _gptq(GPTQConfig(bits=4, group_size=16, blocksize=blocksize), w, x)
    H = 2 * x.double().T @ x.double() / x.shape[0]
    expected = _naive_gptq(w, H, bits=4, group=16)
    agree = (result.weight - expected).abs() < 1e-4
    assert agree.float().mean() > 0.98  # rare rounding ties may flip a code and its row's later codes
    assert _output_error(w, result.weight, x) <= 1.02 * _output_error(w, expected, x)


def test_group_params_fitted_on_updated_weights_across_blocks():
    # group (32) larger than block (8): a group's grid must reflect every earlier column's update
    torch.manual_seed(1)
    w = torch.randn(8, 64)
    x = _correlated_inputs(64, seed=4)
    small_blocks = _gptq(GPTQConfig(bits=3, group_size=32, blocksize=8), w, x)
    one_block = _gptq(GPTQConfig(bits=3, group_size=32, blocksize=64), w, x)
    assert torch.allclose(small_blocks.scales, one_block.scales, atol=1e-5)
    assert (small_blocks.weight - one_block.weight).abs().lt(1e-4).float().mean() > 0.98


def test_dead_inputs_are_zeroed():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    x = _correlated_inputs(16)
    x[:, 5] = 0
    result = _gptq(GPTQConfig(bits=4, group_size=8), w, x)
    assert result.info["dead_inputs"] == 1
    assert (result.weight[:, 5] == 0).all()


def test_indefinite_hessian_raises_damping_and_records_it():
    torch.manual_seed(0)
    cols = 16
    basis, _ = torch.linalg.qr(torch.randn(cols, cols))
    eigenvalues = torch.linspace(1.0, 10.0, cols)
    eigenvalues[0] = -0.2  # one negative direction: percdamp 0.01 * mean diag (~0.05) is not enough
    gptq = GPTQ(GPTQConfig(bits=4, group_size=8), (6, cols))
    gptq.H = basis @ torch.diag(eigenvalues) @ basis.T
    w = torch.randn(6, cols)
    result = gptq.compress(w)
    assert result.info["damping_retries"] >= 1
    assert result.info["damping"] > 0.2
    assert torch.isfinite(result.weight).all()
    assert _levels_per_group(result.weight, 8) <= 16
    rtn = RTN(RTNConfig(bits=4, group_size=8), w.shape).compress(w)
    assert not torch.equal(result.weight, rtn.weight)  # still GPTQ, not a silent RTN fallback


def test_exactly_singular_hessian_without_damping_is_retried():
    gptq = GPTQ(GPTQConfig(bits=4, group_size=None, percdamp=0.0), (4, 8))
    gptq.H = torch.ones(8, 8)  # rank one: the second Cholesky pivot is exactly 0
    result = gptq.compress(torch.randn(4, 8))
    assert result.info["damping_retries"] >= 1 and result.info["damping"] > 0
    assert torch.isfinite(result.weight).all()


def test_non_finite_statistics_or_weights_fail_clearly():
    gptq = GPTQ(GPTQConfig(), (4, 8))
    with pytest.raises(FloatingPointError, match="calibration input"):
        gptq.add_batch(torch.full((2, 8), float("nan")))
    gptq = GPTQ(GPTQConfig(group_size=None), (4, 8))
    gptq.add_batch(torch.randn(10, 8))
    w = torch.randn(4, 8)
    w[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="weight"):
        gptq.compress(w)
    with pytest.raises(RuntimeError, match="add_batch"):
        GPTQ(GPTQConfig(), (4, 8)).compress(torch.randn(4, 8))
