"""SpQR against RTN, its grids and outliers against direct counts, its average bits against the paper's
formula computed by hand, and its checkpoints (outliers included) bit for bit."""

import re

import pytest
import torch

from calib_assets.compression import (
    RTN,
    RTNConfig,
    SpQR,
    SpQRConfig,
    apply_checkpoint,
    compress_model,
    load_checkpoint,
    make_method_config,
    save_checkpoint,
)
from calib_assets.compression.checkpoint import _encode
from calib_assets.compression.quantizer import dequantize
from calib_assets.compression.spqr import grid_statistics, outlier_mask
from calib_assets_tests.helpers import float_bits, output_error, salient_inputs, tiny_llama_factory


def _spqr(config, w, x):
    spqr = SpQR(config, w.shape)
    for part in x.chunk(4):
        spqr.add_batch(part[None])
    return spqr.compress(w)


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    return torch.randn(64, 128), salient_inputs(128)


@pytest.mark.parametrize("config", [SpQRConfig(), SpQRConfig(act_order=False), SpQRConfig(simplified_outliers=True),
                                    SpQRConfig(outlier_threshold=float("inf")), SpQRConfig(bits=4, group_size=32)],
                         ids=lambda c: c.label())
def test_spqr_beats_rtn(config, problem):
    w, x = problem
    result = _spqr(config, w, x)
    rtn = RTN(RTNConfig(bits=config.bits, group_size=config.group_size), w.shape).compress(w)
    assert output_error(w, result.weight, x) < 0.9 * output_error(w, rtn.weight, x)
    assert result.info["damping_retries"] == 0 and torch.isfinite(result.weight).all()


def _groups_of(result):
    cols = result.weight.shape[1]
    return result.g_idx.long() if result.g_idx is not None else torch.arange(cols) // result.group_size


@pytest.mark.parametrize("act_order", [True, False])
def test_grids_levels_and_outliers(act_order, problem):
    w, x = problem
    config = SpQRConfig(act_order=act_order)
    result = _spqr(config, w, x)
    outliers = outlier_mask(result)
    assert 0 < int(outliers.sum()) == result.info["outliers"] < 0.1 * w.numel()
    scales, zeros = grid_statistics(result)
    grid = dequantize(result.unpacked_codes(), scales, zeros, result.group_size, result.g_idx)
    assert torch.equal(result.weight[~outliers], grid[~outliers])  # non-outliers: exactly their codes
    groups = _groups_of(result)
    assert torch.equal(torch.bincount(groups), torch.full((128 // 16,), 16))
    for row in range(w.shape[0]):
        for group in range(128 // 16):
            inliers = result.weight[row, (groups == group) & ~outliers[row]]
            assert inliers.unique().numel() <= 2**config.bits
    # second level: within a run of qq_groupsize rows, a group's scales (zeros) take <= 2^qq_bits values
    for start in range(0, w.shape[0], config.qq_groupsize):
        for group in range(128 // 16):
            assert scales[start : start + 16, group].unique().numel() <= 2**config.qq_scale_bits
            assert zeros[start : start + 16, group].unique().numel() <= 2**config.qq_zero_bits
    assert not torch.equal(zeros, zeros.round())  # zero points are not rounded (SpQR)


def test_act_order_groups_follow_hessian_diagonal(problem):
    w, x = problem
    result = _spqr(SpQRConfig(), w, x)
    energy = (x * x).sum(dim=0)
    first_group = set(torch.argsort(energy, descending=True)[:16].tolist())
    assert set(torch.nonzero(result.g_idx == 0).squeeze(1).tolist()) == first_group


def test_bits_per_param_matches_hand_formula(problem):
    w, x = problem
    result = _spqr(SpQRConfig(bits=3, group_size=16, qq_scale_bits=3, qq_zero_bits=3, qq_groupsize=16), w, x)
    outliers = int(outlier_mask(result).sum())
    # 3 bits + (3 + 3) / 16 for the group's quantized scale and zero + 2 * (16 + 16) / (16 * 16) for the
    # fp16 scale and zero of the second-level grids of scales and of zeros = 3.625, + 32 bits per outlier
    assert result.info["bits_per_param"] == pytest.approx(3.625 + 32 * outliers / (64 * 128))
    none = _spqr(SpQRConfig(bits=4, group_size=32, qq_scale_bits=2, qq_zero_bits=5, qq_groupsize=8,
                            outlier_threshold=float("inf")), w, x)
    assert none.info["outliers"] == 0 and not outlier_mask(none).any()
    assert none.info["bits_per_param"] == pytest.approx(4 + 7 / 32 + 64 / 256)


def test_first_level_statistics_are_read_back_from_the_second_level_not_held(problem):
    """Without outliers, the weight is exactly the codes dequantized with the scales and zeros that the
    second-level codes and grids give back by hand; the result holds no fp32 copy of them."""
    w, x = problem
    result = _spqr(SpQRConfig(bits=3, group_size=16, outlier_threshold=float("inf")), w, x)
    assert result.scales is None and result.zeros is None
    levels = result.second_level
    by_hand = {}
    for key, stat in levels.items():
        runs = torch.arange(stat.codes.shape[0]) // stat.groupsize
        by_hand[key] = (stat.codes.float() - stat.grid[runs, :, 1]) * stat.grid[runs, :, 0]
    scales, zeros = grid_statistics(result)
    assert torch.equal(scales, by_hand["scales"].clamp_min(1e-9)) and torch.equal(zeros, by_hand["zeros"])
    columns = torch.arange(w.shape[1]) // 16 if result.g_idx is None else result.g_idx.long()  # act-order
    expected = ((result.unpacked_codes().float() - by_hand["zeros"][:, columns])
                * by_hand["scales"].clamp_min(1e-9)[:, columns])
    assert torch.equal(result.weight, expected)


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("relative", [0.2, 0.05])
def test_outlier_threshold_is_relative_to_the_mean_obs_spread(act_order, relative, problem):
    """threshold = outlier_threshold * mean_j(var_i(W_ij) / U_jj^2), computed here in float64 from the
    inputs: H = 2 X^T X / n, columns by descending diag(H) under act-order, U the upper Cholesky factor of
    (H + percdamp * mean diag(H) I)^-1 in that order, the variance over rows unbiased."""
    w, x = problem
    config = SpQRConfig(act_order=act_order, outlier_threshold=relative)
    result = _spqr(config, w, x)
    H = 2 * x.double().T @ x.double() / x.shape[0]
    order = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(w.shape[1])
    H, W = H[order][:, order], w.double()[:, order]
    damped = H + config.percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=torch.float64)
    U = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    rows = W.shape[0]
    variance = ((W - W.mean(dim=0)) ** 2).sum(dim=0) / (rows - 1)
    expected = relative * float((variance / torch.diag(U) ** 2).mean())
    assert result.info["outlier_threshold"] == pytest.approx(expected, rel=1e-4)
    none = _spqr(SpQRConfig(act_order=act_order, outlier_threshold=float("inf")), w, x)
    assert none.info["outlier_threshold"] is None


def test_lower_threshold_keeps_more_outliers(problem):
    w, x = problem
    results = [_spqr(SpQRConfig(outlier_threshold=t), w, x) for t in (0.05, 0.2, 1.0, 1e6)]
    counts = [r.info["outliers"] for r in results]
    assert counts[0] > counts[1] > counts[2] >= counts[3] == 0
    errors = [output_error(w, r.weight, x) for r in results]
    assert errors[0] < errors[1] < errors[3]  # the outliers kept in fp32 pay off


def test_config_validation_and_labels():
    assert SpQRConfig().label() == "spqr-w3g16"
    assert SpQRConfig(bits=4, outlier_threshold=float("inf"), act_order=False).label() == "spqr-w4g16-olnone-noact"
    assert re.fullmatch(r"[a-z0-9-]+", SpQRConfig(qq_scale_bits=4, percdamp=0.1, simplified_outliers=True).label())
    config = make_method_config("spqr", {"bits": 4})
    assert make_method_config("spqr", config.to_dict()) == config
    assert SpQRConfig.needs_calibration
    for params, needle in [({"bits": 9}, "bits=9"), ({"bits": 1}, "bits=1"), ({"qq_zero_bits": 0}, "qq_zero_bits=0"),
                           ({"outlier_threshold": -1.0}, "outlier_threshold=-1.0"), ({"act_order": 1}, "act_order")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            make_method_config("spqr", params)
    with pytest.raises(ValueError, match="qq_groupsize") as error:
        make_method_config("spqr", {"qq_group_size": 16})
    assert "outlier_threshold" in str(error.value)


def test_checkpoint_rejects_undeclared_off_grid_weights(problem):
    w, x = problem
    result = _spqr(SpQRConfig(), w, x)
    result.info["outliers"] -= 1
    with pytest.raises(ValueError, match="declares"):
        _encode("layer", result)


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama_factory()


def test_compress_model_and_checkpoint_are_bit_exact(tiny, tmp_path):
    ids = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(1))
    model = tiny()
    results = compress_model(model, ids, SpQRConfig(), batch_size=4)
    assert len(results) == 14
    modules = dict(model.named_modules())
    for name, result in results.items():
        assert torch.equal(float_bits(modules[name].weight), float_bits(result.weight))
        assert result.g_idx is not None and result.info["bits_per_param"] > 3.625
    assert sum(r.info["outliers"] for r in results.values()) > 0

    manifest = save_checkpoint(tmp_path / "ckpt", results, {"method": SpQRConfig().to_dict()})
    assert sum(layer.get("outliers", 0) for layer in manifest["layers"].values()) == \
        sum(r.info["outliers"] for r in results.values())
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    for name, result in results.items():
        assert torch.equal(float_bits(loaded[name].weight), float_bits(result.weight))
        assert torch.equal(loaded[name].unpacked_codes(), result.unpacked_codes())
        assert torch.equal(loaded[name].g_idx, result.g_idx)
    fresh = tiny()
    apply_checkpoint(fresh, tmp_path / "ckpt")
    compressed = model.state_dict()
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(float_bits(tensor), float_bits(compressed[key])), key


def _paper_bytes(config, rows, cols, outliers):
    """Bytes the paper's count gives, summed by hand: packed codes at `bits`, packed scale and zero codes
    at qq bits per (row, group), two fp16 numbers per second-level grid (one grid of scales and one of
    zeros per run of qq_groupsize rows and group), 4 bytes (fp16 value + 16-bit column) per outlier."""
    groups, runs = cols // config.group_size, -(-rows // config.qq_groupsize)
    codes = -(-rows * cols * config.bits // 8)
    stat_codes = -(-rows * groups * config.qq_scale_bits // 8) + -(-rows * groups * config.qq_zero_bits // 8)
    return codes + stat_codes + 2 * runs * groups * 2 * 2 + 4 * outliers


@pytest.mark.parametrize("config", [SpQRConfig(), SpQRConfig(bits=4, qq_scale_bits=2, qq_zero_bits=5, qq_groupsize=8,
                                                             act_order=False)], ids=lambda c: c.label())
def test_size_on_disk_matches_bits_accounting(config, problem, tmp_path):
    w, x = problem
    rows, cols = w.shape
    result = _spqr(config, w, x)
    outliers = result.info["outliers"]
    assert outliers > 0
    manifest = save_checkpoint(tmp_path / "ckpt", {"layer": result}, {})
    # beyond the paper's count: the act-order permutation (int16 group per column) and the int16 outlier
    # count per row that the compressed-row form needs
    overhead = (2 * cols if config.act_order else 0) + 2 * rows
    assert manifest["size_bytes"] == _paper_bytes(config, rows, cols, outliers) + overhead
    paper_bits = result.info["bits_per_param"]
    assert 8 * _paper_bytes(config, rows, cols, outliers) / w.numel() == pytest.approx(paper_bits)
    assert manifest["bits_per_param"] - paper_bits == pytest.approx(8 * overhead / w.numel())
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(float_bits(loaded["layer"].weight), float_bits(result.weight))
    assert loaded["layer"].scales is None and loaded["layer"].zeros is None  # the second level stands for them
    for mine, theirs in zip(grid_statistics(loaded["layer"]), grid_statistics(result)):
        assert torch.equal(mine, theirs)


def test_second_level_grids_are_fp16_and_outliers_fp16(problem):
    w, x = problem
    result = _spqr(SpQRConfig(), w, x)
    for stat in result.second_level.values():
        assert torch.equal(stat.grid.half().float(), stat.grid)
        assert int(stat.codes.max()) < 2**stat.bits
    outliers = outlier_mask(result)
    kept = result.weight[outliers]
    assert torch.equal(kept.half().float(), kept)


def test_near_flat_statistic_keeps_fp16_zero_in_range():
    from calib_assets.compression.spqr import quantize_statistic

    values = torch.tensor([1.0, 1.0 + 2**-20, 1.0, 1.0])  # range far below fp16 precision of the zero point
    codes, grid = quantize_statistic(values, 3, 4)
    assert torch.isfinite(grid).all()
    recon = (codes.float() - grid[0, 1]) * grid[0, 0]
    assert torch.allclose(recon, values, rtol=1e-3)
