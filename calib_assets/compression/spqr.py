"""SpQR (Dettmers et al., 2024): GPTQ with small groups whose grid statistics are quantized again, plus
unstructured outliers kept in full precision.

Per linear, with H = 2 X X^T / n and U the upper Cholesky factor of (H + damping I)^-1 (as in GPTQ):
1. act_order: the columns are processed by descending diag(H); a group is a run of `group_size` columns
   in that order (`g_idx` maps each original column to its group).
2. At each group start, a min/max grid per row (asymmetric, zero point not rounded) is fitted on the
   group's current weights, leaving out the likely outliers: a weight whose leave-one-out exclusion lowers
   the group's Hessian-weighted error sum_k ((q_k - w_k) / U_kk)^2 by more than the threshold is
   replaced by its row's mean for the fit. The grid's statistics are then quantized themselves: the
   group's scales (one per row) with a `qq_scale_bits` min/max grid per run of `qq_groupsize` rows, the
   zero points likewise with `qq_zero_bits`. The weights use the dequantized statistics.
3. Column i: q = grid(w), err = (w - q) / U_ii. If err^2 > threshold the weight is an outlier: it keeps
   its current value rounded to fp16 and feeds back only that rounding error. The errors update the
   later columns as in GPTQ.
   threshold = outlier_threshold * mean_j(var_i(W_ij) / U_jj^2) over columns j, variance over rows i.

The second-level grids' own scale and zero point are rounded to fp16 and the outliers keep their fp16
value (their rounding error is fed back like a quantization error), as the paper counts them, so that a
checkpoint stores exactly what `spqr_bits_per_param` accounts for and still reproduces the weights.

The result holds codes, the second-level codes and grids as `second_level` and no `scales`/`zeros`
(`grid_statistics` dequantizes them from the second level; with them the codes reproduce the quantized
weights exactly), `g_idx` under act-order, and `weight`, which holds the outliers' values: the outliers
are exactly the entries where `weight` differs (bitwise) from `dequantize(codes, ...)`; `outlier_mask`
finds them and checkpoints store them in compressed-row form.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .config import SpQRConfig, check_finite
from .obs import HessianCompressor, inverse_hessian_factor, obs_blocks
from .packing import PackedTensor
from .quantizer import dequantize, dequantize_statistic, off_grid
from .result import CompressedLinear, QuantizedStatistic

SECOND_LEVEL_BITS = 16  # each second-level grid's own scale and zero point: fp16 (the paper's)
OUTLIER_BITS = 32  # per outlier: an fp16 value and a 16-bit column index (the paper's CSR count)
MIN_SCALE = 1e-9  # floor of a dequantized first-level scale


def spqr_bits_per_param(config: SpQRConfig, outliers: int, numel: int) -> float:
    """Average storage bits per weight, the SpQR paper's (and reference code's) count:

        bits + (qq_scale_bits + qq_zero_bits) / group_size
             + 2 * (16 + 16) / (group_size * qq_groupsize)
             + 32 * outliers / numel

    Each group of `group_size` weights of a row has a quantized scale and zero point; each run of
    `qq_groupsize` such groups has two second-level grids (one for the scales, one for the zeros), each
    with an fp16 scale and zero point; each outlier costs a 16-bit value and a 16-bit index.
    """
    g, qqg = config.group_size, config.qq_groupsize
    return (config.bits + (config.qq_scale_bits + config.qq_zero_bits) / g
            + 2 * (2 * SECOND_LEVEL_BITS) / (g * qqg) + OUTLIER_BITS * outliers / numel)


def outlier_mask(result: CompressedLinear) -> torch.Tensor:
    """True where `weight` is not (bitwise) what the codes give, rounded to the weight's dtype: the
    weights kept in full precision (`quantizer.off_grid`)."""
    scales, zeros = grid_statistics(result)
    if result.packed_codes is None or scales is None or zeros is None:
        raise ValueError("outlier_mask needs a quantized result (codes, and scales and zeros or a second level)")
    mask = None if result.packed_mask is None else result.packed_mask.unpack()
    return off_grid(result.weight, result.packed_codes.unpack(), scales, zeros, result.group_size, result.g_idx,
                    mask)


def grid_statistics(result: CompressedLinear) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A quantized result's first-level (scales, zeros): as held, or, where it holds none and has SpQR's
    second-level statistics, dequantized from those (fresh tensors on each call)."""
    def statistic(key: str) -> torch.Tensor | None:
        held = getattr(result, key)
        if held is None and result.second_level is not None and key in result.second_level:
            return spqr_statistic(result.second_level, key)
        return held

    return statistic("scales"), statistic("zeros")


def recount_outliers(result: CompressedLinear) -> None:
    """Bring `info["outliers"]` and `info["bits_per_param"]` up to date once `weight` was rounded to a
    lower precision (a model held in bf16): an outlier that rounds to its grid value stops being one."""
    declared = result.info.get("outliers")
    if not declared:
        return
    count = int(outlier_mask(result).sum())
    if "bits_per_param" in result.info:
        result.info["bits_per_param"] += OUTLIER_BITS * (count - declared) / result.weight.numel()
    result.info["outliers"] = count


class SpQR(HessianCompressor):
    name = "SpQR"
    config: SpQRConfig

    def compress(self, weight: torch.Tensor) -> CompressedLinear:
        start = time.perf_counter()
        cfg = self.config
        tokens = self.nsamples
        W, H, dead = self._weight_and_hessian(weight)
        rows, cols = W.shape
        if cols % cfg.group_size:
            raise ValueError(f"group_size={cfg.group_size} does not divide in_features={cols}")
        perm = torch.arange(cols, device=W.device)
        if cfg.act_order:
            perm = torch.argsort(torch.diag(H), descending=True, stable=True)
            W, H = W[:, perm], H[perm][:, perm]
        U, damping, retries = inverse_hessian_factor(H, cfg.percdamp)

        threshold = outlier_threshold(W, U, cfg.outlier_threshold)
        codes, scales, zeros, outliers, kept, second_level = self._quantize_columns(W, U, threshold)

        invperm = torch.argsort(perm)
        codes = codes[:, invperm]
        g_idx = (invperm // cfg.group_size).to(torch.int32) if cfg.act_order else None
        grid = dequantize(codes, scales, zeros, cfg.group_size, g_idx)
        result = CompressedLinear(  # no scales and zeros: second_level stands for them
            weight=torch.where(outliers[:, invperm], kept[:, invperm], grid), packed_codes=PackedTensor.pack(codes),
            bits=cfg.bits, group_size=cfg.group_size, g_idx=g_idx, second_level=second_level)
        n_outliers = int(outlier_mask(result).sum())
        result.info = {
            "seconds": time.perf_counter() - start, "damping": damping, "damping_retries": retries,
            "dead_inputs": int(dead.sum()), "tokens": tokens, "outliers": n_outliers,
            "outlier_threshold": threshold if math.isfinite(threshold) else None,
            "bits_per_param": spqr_bits_per_param(cfg, n_outliers, rows * cols),
        }
        return result

    def _quantize_columns(self, W: torch.Tensor, U: torch.Tensor, threshold: float):
        """GPTQ's blocked column loop with SpQR grids and outliers; all outputs in processing order."""
        cfg = self.config
        rows, cols = W.shape
        g, maxq = cfg.group_size, 2**cfg.bits - 1
        codes_t = torch.zeros(cols, rows, dtype=torch.float32, device=W.device)  # transposed, as below
        scales = torch.zeros(rows, cols // g, dtype=torch.float32, device=W.device)
        zeros = torch.zeros_like(scales)
        stat_codes = {key: torch.zeros(rows, cols // g, dtype=torch.uint8, device=W.device) for key in STATISTICS}
        stat_grids = {key: torch.zeros(-(-rows // cfg.qq_groupsize), cols // g, 2, device=W.device)
                      for key in STATISTICS}
        outliers_t = torch.zeros(cols, rows, dtype=torch.bool, device=W.device)
        kept_t = torch.zeros(cols, rows, dtype=torch.float32, device=W.device)  # values of the outliers
        find_outliers = math.isfinite(threshold)
        d = torch.diag(U)
        scale: torch.Tensor  # the grid of the current group: set at column 0 (a group start) and after
        zero: torch.Tensor

        for block in obs_blocks(W, U, cfg.blocksize):
            W1t, d1 = block.W1t, block.d.tolist()
            for i in range(block.i2 - block.i1):
                col = block.i1 + i
                if col % g == 0:
                    current = block.current_group(W, i, col + g)
                    stats = self._group_grid(current, d[col : col + g], threshold)
                    for key, (stat_code, stat_grid) in stats.items():
                        stat_codes[key][:, col // g], stat_grids[key][:, col // g] = stat_code, stat_grid
                    scale, zero = _statistics(stat_codes, stat_grids, cfg, col // g)
                    scales[:, col // g], zeros[:, col // g] = scale, zero
                w = W1t[i]
                c = torch.clamp(torch.round(w / scale + zero), 0, maxq)
                err = w - (c - zero) * scale
                if find_outliers:
                    is_outlier = (err / d1[i]).square() > threshold  # the OBS error, scaled by U[i, i]
                    w16 = w.half().float()  # an outlier keeps its fp16 value: only that rounding is fed back
                    err = torch.where(is_outlier, w - w16, err)
                    outliers_t[col], kept_t[col] = is_outlier, w16
                codes_t[col] = c
                block.feed_back(i, err)
        bits = {"scales": cfg.qq_scale_bits, "zeros": cfg.qq_zero_bits}
        second_level = {key: QuantizedStatistic(stat_codes[key], stat_grids[key], bits[key], cfg.qq_groupsize)
                        for key in STATISTICS}
        return codes_t.T.to(torch.uint8).contiguous(), scales, zeros, outliers_t.T, kept_t.T, second_level

    def _group_grid(self, x: torch.Tensor, d: torch.Tensor, threshold: float) -> dict[str, tuple]:
        """Per-row (scale, zero) of a group [rows, g], fitted without its likely outliers, then quantized:
        for each statistic, (codes [rows], fp16-exact grids [runs, 2])."""
        cfg = self.config
        if math.isfinite(threshold) and not cfg.simplified_outliers and x.shape[1] > 1:
            likely = leave_one_out_gain(x, d, cfg.bits) > threshold
            inliers = (~likely).float()
            mean = (x * inliers).sum(dim=1, keepdim=True) / inliers.sum(dim=1, keepdim=True).clamp_min(1)
            x = torch.where(likely, mean, x)
        scale, zero = fit_minmax(x, cfg.bits)
        return {"scales": quantize_statistic(scale, cfg.qq_scale_bits, cfg.qq_groupsize),
                "zeros": quantize_statistic(zero, cfg.qq_zero_bits, cfg.qq_groupsize)}


STATISTICS = ("scales", "zeros")


def outlier_threshold(W: torch.Tensor, U: torch.Tensor, relative: float) -> float:
    """relative * mean_j(var_i(W_ij) / U_jj^2): the bound on an outlier's squared OBS error ((w - q) / U_jj)^2,
    the variance over the rows i of column j (unbiased; 0 for one row), in processing order; inf for none."""
    if not math.isfinite(relative):
        return math.inf
    rows = W.shape[0]
    spread = W.var(dim=0, correction=1 if rows > 1 else 0) / torch.diag(U).square()
    return relative * float(spread.mean())


def _statistics(codes: dict, grids: dict, cfg: SpQRConfig, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantized (scale, zero) [rows] of one column group, as `spqr_statistics` computes them on load."""
    scale = dequantize_statistic(codes["scales"][:, group : group + 1], grids["scales"][:, group : group + 1],
                                 cfg.qq_groupsize)
    zero = dequantize_statistic(codes["zeros"][:, group : group + 1], grids["zeros"][:, group : group + 1],
                                cfg.qq_groupsize)
    return scale[:, 0].clamp_min(MIN_SCALE), zero[:, 0]


def spqr_statistics(second_level: dict[str, QuantizedStatistic]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first-level (scales, zeros) [rows, groups] that SpQR's second-level codes and grids stand for."""
    return spqr_statistic(second_level, "scales"), spqr_statistic(second_level, "zeros")


def spqr_statistic(second_level: dict[str, QuantizedStatistic], key: str) -> torch.Tensor:
    """One of `spqr_statistics`: key "scales" or "zeros"."""
    stat = second_level[key]
    values = dequantize_statistic(stat.codes, stat.grid, stat.groupsize)
    return values.clamp_min(MIN_SCALE) if key == "scales" else values


def fit_minmax(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SpQR's grid per row of x [rows, n]: [min, max] in 2^bits levels, zero point -min/scale not rounded."""
    xmin, xmax = x.min(dim=1).values, x.max(dim=1).values
    flat = xmin == xmax
    xmin = torch.where(flat, xmin - 1, xmin)
    xmax = torch.where(flat, xmax + 1, xmax)
    scale = (xmax - xmin) / (2**bits - 1)
    return scale, -xmin / scale


def round_trip(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """x [rows, n] quantized on per-row grids (scale, zero [rows]) and dequantized."""
    codes = torch.clamp(torch.round(x / scale[:, None] + zero[:, None]), 0, 2**bits - 1)
    return (codes - zero[:, None]) * scale[:, None]


def quantize_statistic(values: torch.Tensor, bits: int, groupsize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Second level: values [rows] quantized with a min/max grid per run of `groupsize` rows whose scale
    and zero point are fp16 numbers -> (codes [rows] uint8, grids [runs, 2] of (scale, zero))."""
    n = values.numel()
    padded = torch.cat([values, values[-1:].expand((-n) % groupsize)]).view(-1, groupsize)  # pad: same min/max
    scale, zero = fit_fp16_grid(padded, bits)
    codes = torch.clamp(torch.round(padded / scale[:, None] + zero[:, None]), 0, 2**bits - 1)
    return codes.reshape(-1)[:n].to(torch.uint8), torch.stack([scale, zero], dim=1)


def fit_fp16_grid(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_minmax` with scale and zero rounded to fp16 (returned as fp32). A near-flat row's scale is
    raised to max|x| / 2^14 so that its zero point -min/scale stays inside fp16's range."""
    xmin, xmax = x.min(dim=1).values, x.max(dim=1).values
    flat = xmin == xmax
    xmin = torch.where(flat, xmin - 1, xmin)
    xmax = torch.where(flat, xmax + 1, xmax)
    scale = torch.maximum((xmax - xmin) / (2**bits - 1), torch.maximum(xmin.abs(), xmax.abs()) * 2.0**-14)
    scale = scale.half().float().clamp_min(2.0**-24)  # 2^-24: fp16's smallest positive number
    zero = (-xmin / scale).half().float()
    check_finite("SpQR second-level grid (fp16)", torch.stack([scale, zero]))
    return scale, zero


def leave_one_out_gain(x: torch.Tensor, d: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows, g]: how much the group's error sum_k ((q_k - x_k) / d_k)^2 drops when weight k is left out
    of the grid fit and not quantized (the grid refitted on the other g - 1 weights)."""
    rows, g = x.shape
    others = torch.arange(g, device=x.device).repeat(g, 1)
    others = others[~torch.eye(g, dtype=torch.bool, device=x.device)].view(g, g - 1)  # row k: all but k
    loo = x[:, others].reshape(rows * g, g - 1)
    scale, zero = fit_minmax(loo, bits)
    loo_error = ((round_trip(loo, scale, zero, bits) - loo).view(rows, g, g - 1) / d[others]).square().sum(-1)
    scale, zero = fit_minmax(x, bits)
    base_error = ((round_trip(x, scale, zero, bits) - x) / d).square().sum(dim=1, keepdim=True)
    return base_error - loo_error


def spqr_info_summary(results: dict[str, CompressedLinear]) -> dict[str, Any]:
    """Whole-model outlier count and average bits per parameter (numel-weighted) of SpQR results."""
    numel = sum(r.weight.numel() for r in results.values() if "bits_per_param" in r.info)
    if not numel:
        return {"outliers": 0, "bits_per_param": None}
    bits = sum(r.info["bits_per_param"] * r.weight.numel() for r in results.values() if "bits_per_param" in r.info)
    return {"outliers": sum(r.info["outliers"] for r in results.values() if "outliers" in r.info),
            "bits_per_param": bits / numel}
