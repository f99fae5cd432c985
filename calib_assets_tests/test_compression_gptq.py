"""GPTQ against RTN, against a naive unblocked implementation, and on broken Hessians; act-order, static
groups and the true-sequential engine."""

import pytest
import torch

from calib_assets.compression import (
    GPTQ,
    RTN,
    GPTQConfig,
    RTNConfig,
    apply_checkpoint,
    compress_model,
    load_checkpoint,
    make_method_config,
    save_checkpoint,
)
from calib_assets.compression.quantizer import dequantize, fit_params, quantize
from calib_assets_tests.helpers import correlated_inputs, output_error, tiny_llama_factory


def _gptq(config, w, x, chunks=4):
    gptq = GPTQ(config, w.shape)
    for part in x.chunk(chunks):
        gptq.add_batch(part[None])  # [batch, tokens, features]
    return gptq.compress(w)


def _levels_per_group(weight, group):
    rows, cols = weight.shape
    return max(
        weight[r, s : s + group].unique().numel() for r in range(rows) for s in range(0, cols, group)
    )


@pytest.mark.parametrize("bits, group", [(3, 16), (4, 32), (3, None), (2, 16)])
def test_gptq_beats_rtn_oncorrelated_inputs(bits, group):
    torch.manual_seed(0)
    w = torch.randn(24, 64)
    x = correlated_inputs(64)
    gptq = _gptq(GPTQConfig(bits=bits, group_size=group, blocksize=16), w, x)
    rtn = RTN(RTNConfig(bits=bits, group_size=group), w.shape).compress(w)
    assert output_error(w, gptq.weight, x) < 0.9 * output_error(w, rtn.weight, x)
    assert _levels_per_group(gptq.weight, group or 64) <= 2**bits
    assert torch.equal(dequantize(gptq.unpacked_codes(), gptq.scales, gptq.zeros, group), gptq.weight)
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
    x = correlated_inputs(32, seed=3)
    result = _gptq(GPTQConfig(bits=4, group_size=16, blocksize=blocksize), w, x)
    H = 2 * x.double().T @ x.double() / x.shape[0]
    expected = _naive_gptq(w, H, bits=4, group=16)
    agree = (result.weight - expected).abs() < 1e-4
    assert agree.float().mean() > 0.98  # rare rounding ties may flip a code and its row's later codes
    assert output_error(w, result.weight, x) <= 1.02 * output_error(w, expected, x)


def test_group_params_fitted_on_updated_weights_across_blocks():
    # group (32) larger than block (8): a group's grid must reflect every earlier column's update
    torch.manual_seed(1)
    w = torch.randn(8, 64)
    x = correlated_inputs(64, seed=4)
    small_blocks = _gptq(GPTQConfig(bits=3, group_size=32, blocksize=8), w, x)
    one_block = _gptq(GPTQConfig(bits=3, group_size=32, blocksize=64), w, x)
    assert torch.allclose(small_blocks.scales, one_block.scales, atol=1e-5)
    assert (small_blocks.weight - one_block.weight).abs().lt(1e-4).float().mean() > 0.98


def test_dead_inputs_are_zeroed():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    x = correlated_inputs(16)
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
    with pytest.raises(FloatingPointError, match="calibration input contains 1 non-finite"):
        gptq.add_batch(torch.tensor([[float("inf")] + [0.0] * 7]))
    with pytest.raises(FloatingPointError, match="calibration input overflows float32"):
        gptq.add_batch(torch.full((2, 8), 1e30))  # finite, but X^T X is not
    assert gptq.H is None  # a refused batch leaves nothing behind
    gptq = GPTQ(GPTQConfig(group_size=None), (4, 8))
    gptq.add_batch(torch.randn(10, 8))
    w = torch.randn(4, 8)
    w[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="weight"):
        gptq.compress(w)
    with pytest.raises(RuntimeError, match="add_batch"):
        GPTQ(GPTQConfig(), (4, 8)).compress(torch.randn(4, 8))


# --- act-order, static groups, true-sequential ---------------------------------------------------------

def _with_hessian(config, w, H):
    gptq = GPTQ(config, w.shape)
    gptq.H = H.clone()
    return gptq.compress(w)


def _scaled_inputs(cols: int, seed: int, spread: float = 3.0) -> torch.Tensor:
    """Correlated inputs whose features have strongly different scales (log-uniform over `spread` decades)."""
    gen = torch.Generator().manual_seed(seed + 100)
    scales = 10 ** (spread * torch.rand(cols, generator=gen) - spread / 2)
    return correlated_inputs(cols, seed=seed) * scales


def test_act_order_is_plain_gptq_on_permuted_columns():
    torch.manual_seed(0)
    w = torch.randn(12, 64)
    x = _scaled_inputs(64, seed=1)
    H = 2 * x.T @ x / x.shape[0]
    perm = torch.argsort(torch.diag(H), descending=True, stable=True)
    inverse = torch.argsort(perm)
    assert not torch.equal(perm, torch.arange(64))
    act = _with_hessian(GPTQConfig(bits=3, group_size=16, blocksize=16, act_order=True), w, H)
    plain = _with_hessian(GPTQConfig(bits=3, group_size=16, blocksize=16), w[:, perm], H[perm][:, perm])
    assert torch.equal(act.weight, plain.weight[:, inverse])
    assert torch.equal(act.unpacked_codes(), plain.unpacked_codes()[:, inverse])
    assert torch.equal(act.scales, plain.scales) and torch.equal(act.zeros, plain.zeros)
    assert act.g_idx.dtype == torch.int32 and act.g_idx.shape == (64,)
    assert torch.equal(act.g_idx.long(), inverse // 16)  # column -> group of its processing position
    assert torch.equal(dequantize(act.unpacked_codes(), act.scales, act.zeros, 16, act.g_idx), act.weight)
    assert (torch.bincount(act.g_idx.long()) == 16).all()
    for g in range(4):
        assert max(act.weight[r, act.g_idx == g].unique().numel() for r in range(12)) <= 8


def test_act_order_helps_on_heterogeneous_input_scales():
    act, plain = [], []
    for seed in range(4):
        torch.manual_seed(seed)
        w = torch.randn(16, 64)
        x = _scaled_inputs(64, seed=seed)
        act.append(output_error(w, _gptq(GPTQConfig(bits=3, group_size=None, act_order=True), w, x).weight, x))
        plain.append(output_error(w, _gptq(GPTQConfig(bits=3, group_size=None), w, x).weight, x))
    assert sum(act) <= sum(plain)


@pytest.mark.parametrize("act_order", [False, True])
def test_static_groups_use_rtn_grids_of_original_weights(act_order):
    torch.manual_seed(0)
    w = torch.randn(10, 64)
    x = _scaled_inputs(64, seed=2)
    result = _gptq(GPTQConfig(bits=3, group_size=16, blocksize=16, static_groups=True, act_order=act_order), w, x)
    rtn = RTN(RTNConfig(bits=3, group_size=16), w.shape).compress(w)
    assert torch.equal(result.scales, rtn.scales) and torch.equal(result.zeros, rtn.zeros)
    assert result.g_idx is None  # groups are runs of original columns
    assert torch.equal(dequantize(result.unpacked_codes(), result.scales, result.zeros, 16), result.weight)
    assert _levels_per_group(result.weight, 16) <= 8
    assert output_error(w, result.weight, x) < output_error(w, rtn.weight, x)
    dynamic = _gptq(GPTQConfig(bits=3, group_size=16, blocksize=16, act_order=act_order), w, x)
    assert not torch.equal(dynamic.scales, rtn.scales)


@pytest.mark.parametrize(
    "config, label",
    [(GPTQConfig(act_order=True), "gptq-w4g128-act"),
     (GPTQConfig(bits=3, group_size=64, act_order=True, static_groups=True), "gptq-w3g64-act-static"),
     (GPTQConfig(true_sequential=True, percdamp=0.1), "gptq-w4g128-ts-damp0p1"),
     (GPTQConfig(symmetric=True, act_order=True, true_sequential=True), "gptq-w4g128-sym-act-ts")],
)
def test_new_option_labels(config, label):
    assert config.label() == label
    assert make_method_config("gptq", config.to_dict()) == config


@pytest.mark.parametrize(
    "params, needle",
    [({"act_order": 1}, "act_order"), ({"static_groups": True, "group_size": None}, "static_groups"),
     ({"true_sequential": "yes"}, "true_sequential"), ({"actorder": True}, "act_order")],
)
def test_new_options_are_validated(params, needle):
    with pytest.raises(ValueError, match=needle):
        make_method_config("gptq", params)


def test_act_order_checkpoint_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    x = _scaled_inputs(32, seed=3)
    results = {"model.layers.0.mlp.up_proj": _gptq(GPTQConfig(bits=3, group_size=8, act_order=True), w, x),
               "model.layers.0.mlp.down_proj": _gptq(GPTQConfig(bits=4, group_size=8, act_order=True,
                                                                static_groups=True), w, x)}
    save_checkpoint(tmp_path / "ckpt", results, {})
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    for name, result in results.items():
        assert torch.equal(loaded[name].weight.view(torch.int32), result.weight.view(torch.int32))
        assert torch.equal(loaded[name].unpacked_codes(), result.unpacked_codes())
        if result.g_idx is None:
            assert loaded[name].g_idx is None
        else:
            assert torch.equal(loaded[name].g_idx, result.g_idx)


@pytest.fixture(scope="module")
def tiny_llama():
    make = tiny_llama_factory()
    ids = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(1))
    return make, ids


def _inputs_of(model, module_name, ids):
    captured = []
    module = dict(model.named_modules())[module_name]
    handle = module.register_forward_hook(lambda m, args, out: captured.append(args[0].detach().clone()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return torch.cat([c.reshape(-1, c.shape[-1]) for c in captured]).double()


def _compress_recording_hessians(make, ids, config, monkeypatch):
    used = []
    original = GPTQ.compress

    def spy(self, weight):
        used.append((tuple(weight.shape), self.H.clone().double()))
        return original(self, weight)

    monkeypatch.setattr(GPTQ, "compress", spy)
    model = make()
    results = compress_model(model, ids, config, forward_dtype=torch.float32, batch_size=4)
    monkeypatch.setattr(GPTQ, "compress", original)
    return model, results, used


def test_true_sequential_stages_see_compressed_earlier_stages(tiny_llama, monkeypatch):
    make, ids = tiny_llama
    config = GPTQConfig(bits=3, group_size=32, true_sequential=True)
    model, results, used = _compress_recording_hessians(make, ids, config, monkeypatch)
    # stages in call order: [q,k,v] -> [o] -> [gate,up] -> [down], in each layer
    assert [shape for shape, _ in used] == [(128, 64), (64, 64), (256, 64), (64, 128)] * 2

    reference = make()
    modules = dict(reference.named_modules())
    prefix = "model.layers.0."
    for stage, (names, target) in enumerate([(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                             "self_attn.o_proj"),
                                            (["self_attn.o_proj"], "mlp.gate_proj"),
                                            (["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj")]):
        uncompressed = _inputs_of(reference, prefix + target, ids)
        for name in names:
            modules[prefix + name].weight.data.copy_(results[prefix + name].weight)
        x = _inputs_of(reference, prefix + target, ids)
        expected = 2 * x.T @ x / x.shape[0]
        hessian = used[stage + 1][1]
        tolerance = 1e-5 * float(expected.abs().max())
        assert torch.allclose(hessian, expected, rtol=1e-4, atol=tolerance), target
        before = 2 * uncompressed.T @ uncompressed / uncompressed.shape[0]
        assert not torch.allclose(hessian, before, rtol=1e-4, atol=tolerance), target

    # the first stage has nothing compressed before it: identical to the one-pass engine
    _, one_pass, used_one_pass = _compress_recording_hessians(
        make, ids, GPTQConfig(bits=3, group_size=32), monkeypatch)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert torch.equal(one_pass[prefix + name].weight, results[prefix + name].weight)
    assert not torch.equal(one_pass[prefix + "self_attn.o_proj"].weight, results[prefix + "self_attn.o_proj"].weight)
    uncompressed = _inputs_of(make(), prefix + "self_attn.o_proj", ids)
    expected = 2 * uncompressed.T @ uncompressed / uncompressed.shape[0]
    assert torch.allclose(used_one_pass[1][1], expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    for name, result in results.items():  # the model holds the returned weights
        assert torch.equal(dict(model.named_modules())[name].weight, result.weight)


def test_act_order_through_the_engine(tiny_llama, tmp_path):
    make, ids = tiny_llama
    model = make()
    results = compress_model(model, ids, GPTQConfig(bits=4, group_size=32, act_order=True), batch_size=4)
    q, k = results["model.layers.0.self_attn.q_proj"], results["model.layers.0.self_attn.k_proj"]
    assert q.g_idx is not None and torch.equal(q.g_idx, k.g_idx)  # row-stacked: one permutation
    for result in results.values():
        codes = result.unpacked_codes()
        assert torch.equal(dequantize(codes, result.scales, result.zeros, 32, result.g_idx), result.weight)
    save_checkpoint(tmp_path / "ckpt", results, {})
    fresh = make()
    apply_checkpoint(fresh, tmp_path / "ckpt")
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(tensor.view(torch.int32), model.state_dict()[key].view(torch.int32)), key


# --- Hessian accumulation and its inverse factor -------------------------------------------------------

@pytest.mark.parametrize("columns", [24, 500])  # one block row, and two of them (GRAM_BLOCK = 384)
def test_running_hessian_equals_the_one_shot_gram(columns):
    """Batch by batch, upper triangle by block rows = 2 X^T X / n computed at once in fp64."""
    from calib_assets.compression.obs import GRAM_BLOCK, HessianCompressor

    assert columns > GRAM_BLOCK or columns == 24
    x = correlated_inputs(columns, 300)
    compressor = HessianCompressor(GPTQConfig(), (5, columns))
    for part in x.split([7, 100, 193]):
        compressor.add_batch(part[None])
    expected = 2 * x.double().T @ x.double() / x.shape[0]
    assert compressor.nsamples == 300
    assert torch.allclose(compressor.H.double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert torch.equal(compressor.H, compressor.H.T)


@pytest.mark.parametrize("columns", [24, 1100])  # one full matmul, and block rows (BF16_SINGLE_BLOCK = 1024)
def test_hessian_of_bf16_inputs_is_exact_on_bf16_units(columns, monkeypatch):
    """Inputs of a bf16 forward pass: H equals 2 X^T X / n of the same bf16 values in fp64 to fp32
    accuracy (products of bf16 values are exact in fp32), through the bf16 units where the CPU has them,
    and the matmul precision setting is restored afterwards."""
    from calib_assets.compression import obs
    from calib_assets.compute import cpu_has_native_bf16

    assert (columns > obs.BF16_SINGLE_BLOCK) == (columns == 1100)
    seen = []
    original = obs.fp32_matmuls_on_bf16_units
    monkeypatch.setattr(obs, "fp32_matmuls_on_bf16_units", lambda on: seen.append(on) or original(on))
    x = correlated_inputs(columns, 300).bfloat16()
    precision = torch.backends.mkldnn.matmul.fp32_precision
    compressor = obs.HessianCompressor(GPTQConfig(), (5, columns))
    for part in x.split([7, 100, 193]):
        compressor.add_batch(part[None])
    expected = 2 * x.double().T @ x.double() / x.shape[0]
    assert torch.allclose(compressor.H.double(), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    assert seen == [cpu_has_native_bf16()] * 3
    assert torch.backends.mkldnn.matmul.fp32_precision == precision
    compressor.add_batch(x[:5].float())  # fp32 inputs never take the bf16 units
    assert seen[-1] is False


def test_inverse_hessian_factor_is_the_upper_cholesky_of_the_inverse():
    from calib_assets.compression.obs import inverse_hessian_factor

    torch.manual_seed(1)
    x = correlated_inputs(32, 200).double()
    H = (2 * x.T @ x / 200).float()
    U, damping, retries = inverse_hessian_factor(H, 0.01)
    assert retries == 0 and damping == pytest.approx(0.01 * float(torch.diag(H).mean()))
    assert torch.equal(U, torch.triu(U)) and (torch.diag(U) > 0).all()
    damped = H.double() + damping * torch.eye(32, dtype=torch.float64)
    expected = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    assert torch.allclose(U.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def _naive_gptq_grids(w, H, bits, group, percdamp=0.01):
    """`_naive_gptq`'s grids: the (scale, zero) [rows, groups] fitted at each group start on the columns as
    updated by every earlier column (float64 updates, the fit itself in fp32)."""
    w = w.double().clone()
    H = H.double().clone()
    cols = w.shape[1]
    H += percdamp * torch.diag(H).mean() * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    scales, zeros = [], []
    for i in range(cols):
        if i % group == 0:
            scale, zero = fit_params(w[:, i : i + group].float(), bits)
            scales.append(scale)
            zeros.append(zero)
        q = dequantize(quantize(w[:, i : i + 1].float(), scale, zero, bits), scale, zero, None).double()
        err = (w[:, i : i + 1] - q) / Hinv[i, i]
        w[:, i + 1 :] -= err @ Hinv[i : i + 1, i + 1 :]
        Hinv = Hinv - Hinv[:, i : i + 1] @ Hinv[i : i + 1, :] / Hinv[i, i]
    return torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


def test_group_crossing_a_block_boundary_is_fitted_with_the_pending_update():
    """group 16, blocksize 24: the group at column 16 spans columns 16..31 across the block end at 24. Its
    grid must see columns 24..31 as updated by the block's first 16 errors, which the lazy batch update
    has not yet written into W (the pending term of `ObsBlock.current_group`)."""
    torch.manual_seed(2)
    w = torch.randn(32, 48)
    x = correlated_inputs(48, seed=5)
    result = _gptq(GPTQConfig(bits=4, group_size=16, blocksize=24), w, x)
    H = 2 * x.double().T @ x.double() / x.shape[0]
    scales, zeros = _naive_gptq_grids(w, H, bits=4, group=16)
    close = ((result.scales - scales).abs() <= 1e-5 * scales.abs()) & (result.zeros == zeros)
    # rare rounding ties may flip a code, and with it the later grids of its row
    assert close[:, 1].float().mean() > 0.9  # the crossing group
    assert close.float().mean() > 0.9
    expected = _naive_gptq(w, H, bits=4, group=16)
    assert (result.weight - expected).abs().lt(1e-4).float().mean() > 0.95
    assert output_error(w, result.weight, x) <= 1.02 * output_error(w, expected, x)


def _factor_retries(H: torch.Tensor, percdamp: float) -> tuple[float, int]:
    """The damping schedule by hand: start at percdamp * mean diag(H) (or, from 0, at 1e-6 * mean diag),
    x10 per retry, until H + damping I is positive definite (its least eigenvalue, in fp64, above 0)."""
    mean = float(torch.diag(H.double()).mean())
    lowest = float(torch.linalg.eigvalsh(H.double()).min())
    damping, retries = percdamp * mean, 0
    while damping + lowest <= 0:
        damping, retries = max(damping * 10, 1e-6 * mean), retries + 1
    return damping, retries


@pytest.mark.parametrize("diagonal, percdamp, retries, rotate", [
    ([4.0, 3.0, 2.0, 1.0, -0.2], 0.01, 2, True),  # mean 1.96: 0.0196 -> 0.196 -> 1.96
    ([4.0, 3.0, 2.0, 1.0, -0.05], 0.01, 1, True),  # mean 1.99: 0.0199 -> 0.199
    ([2.0, 2.0, 2.0, 0.0], 0.0, 1, False),  # from 0: the floor 1e-6 * mean = 1.5e-6
    ([2.0, 2.0, 2.0, -1e-5], 0.0, 2, False),  # 0 -> 1.5e-6 -> 1.5e-5
    ([4.0, 3.0, 2.0, 1.0, -0.01], 0.01, 0, True),  # mean 1.998: 0.01998 covers -0.01 at once
])
def test_damping_schedule_is_x10_from_percdamp_of_the_mean_diagonal(diagonal, percdamp, retries, rotate):
    from calib_assets.compression.obs import inverse_hessian_factor

    H = torch.diag(torch.tensor(diagonal))
    if rotate:  # the same spectrum in a random basis (eigenvalues far from the damping steps)
        gen = torch.Generator().manual_seed(0)
        basis, _ = torch.linalg.qr(torch.randn(len(diagonal), len(diagonal), generator=gen))
        H = (basis @ H @ basis.T).float()
    expected_damping, expected_retries = _factor_retries(H, percdamp)
    assert expected_retries == retries
    U, damping, got_retries = inverse_hessian_factor(H, percdamp)
    assert got_retries == retries
    assert damping == pytest.approx(expected_damping, rel=1e-6)
    damped = H.double() + damping * torch.eye(H.shape[0], dtype=torch.float64)
    expected = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    assert torch.allclose(U.double(), expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max()))


def test_gptq_records_the_damping_it_used():
    torch.manual_seed(0)
    cols = 16
    basis, _ = torch.linalg.qr(torch.randn(cols, cols))
    eigenvalues = torch.linspace(1.0, 10.0, cols)
    eigenvalues[0] = -0.2
    H = basis @ torch.diag(eigenvalues) @ basis.T
    result = _with_hessian(GPTQConfig(bits=4, group_size=8), torch.randn(6, cols), H)
    # mean diag = (88 - 1 - 0.2) / 16 = 5.425: 0.05425 does not cover -0.2, 0.5425 does
    assert result.info["damping_retries"] == 1
    assert result.info["damping"] == pytest.approx(0.01 * float(torch.diag(H).mean()) * 10, rel=1e-12)
    assert result.info["damping"] == pytest.approx(0.5425, rel=1e-5)
