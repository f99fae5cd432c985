"""Linears that read the same input are compressed as one row-stacked matrix: same result as one by one."""

import torch

from calib_assets.compression import GPTQ, GPTQConfig, Wanda, WandaConfig
from calib_assets.compression.engine import _split_rows


def _inputs(cols=64, tokens=512, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, cols, generator=generator) @ torch.randn(cols, cols, generator=generator)


def _separately_and_stacked(make, weights, x):
    separate = []
    for weight in weights:
        compressor = make(weight.shape)
        compressor.add_batch(x)
        separate.append(compressor.compress(weight))
    stacked = make((sum(w.shape[0] for w in weights), weights[0].shape[1]))
    stacked.add_batch(x)
    return separate, _split_rows(stacked.compress(torch.cat(weights)), [w.shape[0] for w in weights])


def test_wanda_stacked_masks_equal_one_by_one():
    weights = [torch.randn(48, 64), torch.randn(16, 64), torch.randn(16, 64)]
    separate, stacked = _separately_and_stacked(lambda shape: Wanda(WandaConfig(n=2, m=4), shape), weights, _inputs())
    for one, many in zip(separate, stacked):
        assert torch.equal(one.mask, many.mask) and torch.equal(one.weight, many.weight)


def test_gptq_stacked_equals_one_by_one():
    weights = [torch.randn(48, 64), torch.randn(16, 64)]
    config = GPTQConfig(bits=3, group_size=32, blocksize=16)
    separate, stacked = _separately_and_stacked(lambda shape: GPTQ(config, shape), weights, _inputs())
    for one, many in zip(separate, stacked):
        assert one.weight.shape == many.weight.shape
        # the same arithmetic per row; BLAS blocking may differ in the last bit, rarely flipping a rounding
        assert (one.codes == many.codes).float().mean() > 0.995
        torch.testing.assert_close(one.scales, many.scales, rtol=1e-4, atol=1e-6)
