"""SparseGPT against magnitude and Wanda pruning, its exact sparsity patterns, and joint quantization."""

import pytest
import torch

from calib_assets.compression import (
    Magnitude,
    MagnitudeConfig,
    SparseGPT,
    SparseGPTConfig,
    Wanda,
    WandaConfig,
    apply_checkpoint,
    compress_model,
    load_checkpoint,
    make_method_config,
    save_checkpoint,
)
from calib_assets.compression.quantizer import dequantize
from calib_assets_tests.helpers import correlated_inputs, output_error


def _fed(compressor, x, chunks=4):
    for part in x.chunk(chunks):
        compressor.add_batch(part[None])
    return compressor


def _sparsegpt(config, w, x):
    return _fed(SparseGPT(config, w.shape), x).compress(w)


@pytest.mark.parametrize("params", [{"sparsity": 0.5}, {"n": 2, "m": 4}], ids=["50pct", "2of4"])
def test_sparsegpt_beats_magnitude_and_wanda(params):
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = correlated_inputs(64)
    result = _sparsegpt(SparseGPTConfig(**params, blocksize=32), w, x)
    magnitude = Magnitude(MagnitudeConfig(**params), w.shape).compress(w)
    wanda = _fed(Wanda(WandaConfig(**params), w.shape), x).compress(w)
    error = output_error(w, result.weight, x)
    assert error < 0.9 * output_error(w, magnitude.weight, x)
    assert error < 0.9 * output_error(w, wanda.weight, x)
    assert result.info["damping_retries"] == 0 and not result.quantized
    assert torch.equal(result.weight == 0, ~result.unpacked_mask())  # pruned entries exactly 0, kept ones not
    assert torch.equal(result.weight, torch.where(result.unpacked_mask(), result.weight, 0.0))


@pytest.mark.parametrize("sparsity, blocksize", [(0.5, 16), (0.3, 24), (0.0, 16), (0.7, 128)])
def test_unstructured_count_per_block(sparsity, blocksize):
    torch.manual_seed(1)
    rows, cols = 12, 64
    w = torch.randn(rows, cols)
    result = _sparsegpt(SparseGPTConfig(sparsity=sparsity, blocksize=blocksize), w, correlated_inputs(cols))
    for start in range(0, cols, blocksize):  # the lowest fraction of each block, over all its rows
        block = ~result.unpacked_mask()[:, start : start + blocksize]
        assert int(block.sum()) == int(block.numel() * sparsity)
    assert int((~result.unpacked_mask()).sum(dim=0).gt(0).sum()) > 0 or sparsity == 0
    assert ((~result.unpacked_mask()).sum(dim=1).float().std() > 0) or sparsity == 0  # not a per-row rule


def test_first_block_mask_is_the_obs_saliency():
    # the first block's scores use the untouched weights: W^2 / diag(U)^2 with U = chol(H^-1) upper
    torch.manual_seed(2)
    w = torch.randn(8, 32)
    x = correlated_inputs(32, seed=2)
    result = _sparsegpt(SparseGPTConfig(sparsity=0.5, blocksize=16, percdamp=0.01), w, x)
    H = 2 * x.double().T @ x.double() / x.shape[0]
    H += 0.01 * torch.diag(H).mean() * torch.eye(32, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    score = (w.double()[:, :16] ** 2 / torch.diag(U)[:16] ** 2).reshape(-1)
    expected = torch.ones(8 * 16, dtype=torch.bool)
    expected[score.argsort()[: 8 * 16 // 2]] = False
    assert torch.equal(result.unpacked_mask()[:, :16].reshape(-1), expected)


def _naive_nm_sparsegpt(w, H, n, m, percdamp=0.01):
    """N:M SparseGPT written out in float64 without blocks: scores w^2 / U[j, j]^2 (U the upper Cholesky
    factor of H^-1, as the reference) every m columns, each pruned weight's removal compensated through the
    inverse Hessian of the columns not yet processed, which then eliminates the processed column."""
    w = w.double().clone()
    H = H.double() + percdamp * torch.diag(H.double()).mean() * torch.eye(H.shape[0], dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    d = torch.diag(torch.linalg.cholesky(Hinv, upper=True))
    keep = torch.ones_like(w, dtype=torch.bool)
    for i in range(w.shape[1]):
        if i % m == 0:
            order = torch.sort(w[:, i : i + m] ** 2 / d[i : i + m] ** 2, dim=1, stable=True).indices
            keep[:, i : i + m].scatter_(1, order[:, :n], False)
        err = torch.where(keep[:, i], 0.0, w[:, i]) / Hinv[i, i]
        w[:, i + 1 :] -= err[:, None] * Hinv[i : i + 1, i + 1 :]
        w[:, i] = torch.where(keep[:, i], w[:, i], 0.0)
        Hinv = Hinv - Hinv[:, i : i + 1] @ Hinv[i : i + 1, :] / Hinv[i, i]
    return w.float(), keep


@pytest.mark.parametrize("n, m, blocksize", [(2, 4, 16), (2, 4, 128), (4, 8, 32), (1, 4, 8)])
def test_nm_matches_naive_sparsegpt(n, m, blocksize):
    torch.manual_seed(4)
    w = torch.randn(40, 64)
    x = correlated_inputs(64, seed=6)
    result = _sparsegpt(SparseGPTConfig(n=n, m=m, blocksize=blocksize), w, x)
    expected, keep = _naive_nm_sparsegpt(w, 2 * x.double().T @ x.double() / x.shape[0], n, m)
    # a near-tie may flip and move its row's later choices
    assert (result.unpacked_mask() == keep).float().mean() > 0.98
    assert torch.equal(~keep, expected == 0) and torch.equal(~result.unpacked_mask(), result.weight == 0)
    assert output_error(w, result.weight, x) <= 1.02 * output_error(w, expected, x)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_holds_in_every_group(n, m):
    torch.manual_seed(3)
    w = torch.randn(10, 64)
    result = _sparsegpt(SparseGPTConfig(n=n, m=m, blocksize=32), w, correlated_inputs(64))
    pruned = (~result.unpacked_mask()).reshape(10, 64 // m, m).sum(dim=-1)
    assert (pruned == n).all()
    assert torch.equal(result.weight == 0, ~result.unpacked_mask())


@pytest.mark.parametrize("bits, group, params", [(4, 16, {"sparsity": 0.5}), (3, None, {"n": 2, "m": 4}),
                                                 (4, 32, {"n": 2, "m": 4})])
def test_joint_quantization(bits, group, params):
    torch.manual_seed(4)
    w = torch.randn(16, 64)
    x = correlated_inputs(64)
    config = SparseGPTConfig(**params, bits=bits, group_size=group, blocksize=32)
    result = _sparsegpt(config, w, x)
    assert result.quantized and result.pruned
    assert torch.equal(result.weight, dequantize(result.unpacked_codes(), result.scales, result.zeros, group))
    assert (result.weight[~result.unpacked_mask()] == 0).all()
    assert int((~result.unpacked_mask()).sum()) == w.numel() // 2
    step = group or 64
    for r in range(16):
        for s in range(0, 64, step):
            kept = result.weight[r, s : s + step][result.unpacked_mask()[r, s : s + step]]
            assert kept.unique().numel() <= 2**bits
    unquantized = _sparsegpt(SparseGPTConfig(**params, blocksize=32), w, x)
    assert output_error(w, result.weight, x) < 2 * output_error(w, unquantized.weight, x)


def test_dead_inputs_and_broken_statistics():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    x = correlated_inputs(16)
    x[:, 3] = 0
    result = _sparsegpt(SparseGPTConfig(n=2, m=4, blocksize=16), w, x)
    assert result.info["dead_inputs"] == 1 and (result.weight[:, 3] == 0).all()
    with pytest.raises(RuntimeError, match="SparseGPT needs calibration inputs"):
        SparseGPT(SparseGPTConfig(sparsity=0.5), (4, 8)).compress(torch.randn(4, 8))
    with pytest.raises(FloatingPointError, match="calibration input"):
        SparseGPT(SparseGPTConfig(sparsity=0.5), (4, 8)).add_batch(torch.full((2, 8), float("inf")))


def test_indefinite_hessian_raises_damping():
    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(16, 16))
    eigenvalues = torch.linspace(1.0, 10.0, 16)
    eigenvalues[0] = -0.2
    sparsegpt = SparseGPT(SparseGPTConfig(sparsity=0.5), (6, 16))
    sparsegpt.H = basis @ torch.diag(eigenvalues) @ basis.T
    result = sparsegpt.compress(torch.randn(6, 16))
    assert result.info["damping_retries"] >= 1 and result.info["damping"] > 0.2
    assert torch.isfinite(result.weight).all()


@pytest.mark.parametrize(
    "params, label",
    [({"n": 2, "m": 4}, "sparsegpt-2of4"), ({"sparsity": 0.5}, "sparsegpt-50pct"),
     ({"sparsity": 0.5, "bits": 4, "group_size": 128}, "sparsegpt-50pct-w4g128"),
     ({"n": 2, "m": 4, "bits": 3}, "sparsegpt-2of4-w3"),
     ({"sparsity": 0.5, "blocksize": 64}, "sparsegpt-50pct-bs64")],
)
def test_config_labels_and_registry(params, label):
    config = make_method_config("sparsegpt", params)
    assert config.label() == label
    assert make_method_config("sparsegpt", config.to_dict()) == config
    assert config.needs_calibration
    assert config.row_independent == (config.sparsity is None)  # unstructured: masks over all rows


@pytest.mark.parametrize(
    "params, needle",
    [({"sparsity": 0.5, "bits": 9}, "bits=9"), ({"sparsity": 0.5, "bits": 1}, "bits=1"),
     ({"sparsity": 0.5, "group_size": 64}, "need bits"), ({"n": 2, "m": 4, "blocksize": 30}, "blocksize=30"),
     ({"sparsity": 0.5, "percdamp": -1}, "percdamp=-1"), ({"sparsity": 1.0}, "sparsity=1.0"),
     ({"sparsity": 0.5, "actorder": True}, "allowed")],
)
def test_config_rejects_bad_values(params, needle):
    with pytest.raises(ValueError, match=needle):
        make_method_config("sparsegpt", params)


@pytest.mark.parametrize("config", [SparseGPTConfig(sparsity=0.5, blocksize=32),
                                    SparseGPTConfig(n=2, m=4, bits=4, group_size=32)], ids=lambda c: c.label())
def test_engine_and_checkpoint_round_trip(config, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=256)
    model, fresh = LlamaForCausalLM(llama).eval(), LlamaForCausalLM(llama).eval()
    fresh.load_state_dict(model.state_dict())
    ids = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(1))
    results = compress_model(model, ids, config, batch_size=4)
    assert len(results) == 14
    for name, result in results.items():
        assert int((~result.unpacked_mask()).sum()) == result.weight.numel() // 2, name
        assert torch.equal(result.weight == 0, ~result.unpacked_mask()) or config.bits is not None
        assert (result.weight[~result.unpacked_mask()] == 0).all()
    manifest = save_checkpoint(tmp_path / "ckpt", results, {"method": config.to_dict()})
    assert manifest["sparsity"] == 0.5
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    for name, result in results.items():
        assert torch.equal(loaded[name].weight.view(torch.int32), result.weight.view(torch.int32))
        assert torch.equal(loaded[name].unpacked_mask(), result.unpacked_mask())
        if config.bits is not None:
            assert torch.equal(loaded[name].unpacked_codes(), result.unpacked_codes())
    apply_checkpoint(fresh, tmp_path / "ckpt")
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(tensor.view(torch.int32), model.state_dict()[key].view(torch.int32)), key


def test_row_stacking_is_exact_for_nm_only():
    # the engine row-stacks q/k/v only for row-independent configs: N:M is, unstructured (per block) is not
    torch.manual_seed(5)
    w1, w2 = torch.randn(8, 32), torch.randn(4, 32) * 3
    x = correlated_inputs(32)
    for config, independent in [(SparseGPTConfig(n=2, m=4, bits=4, group_size=16), True),
                                (SparseGPTConfig(sparsity=0.5), False)]:
        stacked = _sparsegpt(config, torch.cat([w1, w2]), x)
        alone = torch.cat([_sparsegpt(config, w1, x).weight, _sparsegpt(config, w2, x).weight])
        assert config.row_independent == independent
        assert torch.equal(stacked.weight, alone) == independent
