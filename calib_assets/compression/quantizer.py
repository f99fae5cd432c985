"""Min/max uniform quantizer (the GPTQ reference behaviour), and codes back to weights.

Each row of `x` (an output channel, or its slice for one group) gets a scale and a zero point fitted on
the row's min and max, with the range widened to include 0 so that 0 is exactly representable.
Asymmetric: zero = round(-min / scale); symmetric: zero = (maxq + 1) / 2 and range [-max|x|, max|x|].
Everything is float32; `dequantize` is the one function that turns codes into weights, and `off_grid`
finds where a result's weight is not what its codes give (SpQR's outliers).
"""

from __future__ import annotations

import torch

from .packing import PackedTensor
from .result import CompressedLinear, held_precision


def fit_params(x: torch.Tensor, bits: int, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of x [rows, cols] -> two fp32 tensors [rows]."""
    maxq = 2**bits - 1
    xmin, xmax = torch.aminmax(x.float(), dim=1)  # one pass over x
    xmin, xmax = xmin.clamp(max=0), xmax.clamp(min=0)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    flat = (xmin == 0) & (xmax == 0)
    xmin = torch.where(flat, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(flat, torch.full_like(xmax, 1.0), xmax)
    scale = (xmax - xmin) / maxq
    if symmetric:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2^bits - 1] (uint8) of x [rows, cols] with per-row scale/zero [rows]."""
    maxq = 2**bits - 1
    q = torch.round(x.float() / scale[:, None]) + zero[:, None]
    return q.clamp(0, maxq).to(torch.uint8)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int | None,
               g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 weights from codes [rows, cols] and per-group scales/zeros [rows, n_groups].

    Column j belongs to group j // group_size, or to group g_idx[j] when a g_idx [cols] is given.
    """
    if scales.dim() == 1:
        scales, zeros = scales[:, None], zeros[:, None]
    if g_idx is not None:
        g_idx = g_idx.long()
        return (codes.float() - zeros.float()[:, g_idx]) * scales.float()[:, g_idx]
    cols = codes.shape[1]
    step = group_size or cols
    scales = scales.float().repeat_interleave(step, dim=1)[:, :cols]
    zeros = zeros.float().repeat_interleave(step, dim=1)[:, :cols]
    return (codes.float() - zeros) * scales


def dequantize_statistic(codes: torch.Tensor, grid: torch.Tensor, groupsize: int) -> torch.Tensor:
    """fp32 values [rows, groups] of a quantized statistic: row r of column group k uses grid[r // groupsize, k]."""
    run = torch.arange(codes.shape[0], device=codes.device) // groupsize
    scale, zero = grid[run, :, 0], grid[run, :, 1]
    return (codes.float() - zero) * scale


def quantized_linear(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                     group_size: int | None, info: dict, g_idx: torch.Tensor | None = None) -> CompressedLinear:
    """A quantizer's result, whose weight is by construction the dequantized codes."""
    return CompressedLinear(weight=dequantize(codes, scales, zeros, group_size, g_idx),
                            packed_codes=PackedTensor.pack(codes), scales=scales, zeros=zeros, bits=bits,
                            group_size=group_size, g_idx=g_idx, info=info)


def quantize_grouped(
    w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest of a whole matrix: (codes [rows, cols], scales, zeros [rows, n_groups])."""
    rows, cols = w.shape
    step = group_size or cols
    codes = torch.empty(rows, cols, dtype=torch.uint8, device=w.device)
    scales, zeros = [], []
    for start in range(0, cols, step):
        block = w[:, start : start + step]
        scale, zero = fit_params(block, bits, symmetric)
        codes[:, start : start + step] = quantize(block, scale, zero, bits)
        scales.append(scale)
        zeros.append(zero)
    return codes, torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


def off_grid(weight: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
             group_size: int | None, g_idx: torch.Tensor | None = None,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """True where `weight` is not (bitwise) what the codes give, rounded to the weight's dtype (where
    `mask` is given, the pruned entries give +0.0): the weights a result keeps in full precision."""
    grid = dequantize(codes, scales, zeros, group_size, g_idx)
    if mask is not None:
        grid = torch.where(mask, grid, torch.zeros((), dtype=grid.dtype, device=grid.device))
    weight = held_precision(weight)
    as_bits = {2: torch.int16, 4: torch.int32}[weight.element_size()]
    return weight.contiguous().view(as_bits) != grid.to(weight.dtype).contiguous().view(as_bits)
