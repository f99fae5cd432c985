"""Min/max uniform quantizer (the GPTQ reference behaviour) and bit packing of integer codes.

Each row of `x` (an output channel, or its slice for one group) gets a scale and a zero point fitted on
the row's min and max, with the range widened to include 0 so that 0 is exactly representable.
Asymmetric: zero = round(-min / scale); symmetric: zero = (maxq + 1) / 2 and range [-max|x|, max|x|].
Everything is float32; `dequantize` is the one function that turns codes into weights.
"""

from __future__ import annotations

import torch

from .config import CompressedLinear


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
    return CompressedLinear(weight=dequantize(codes, scales, zeros, group_size, g_idx), codes=codes,
                            scales=scales, zeros=zeros, bits=bits, group_size=group_size, g_idx=g_idx, info=info)


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


_CHUNK = 1 << 20  # codes per chunk; a multiple of 8 keeps chunk boundaries on byte boundaries


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes of `bits` bits (1..8) into a flat uint8 bitstream, least significant bit first."""
    _check_bits(bits)
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"codes out of range for {bits} bits: [{int(flat.min())}, {int(flat.max())}]")
    chunks = [_pack_chunk(flat[i : i + _CHUNK], bits) for i in range(0, flat.numel(), _CHUNK)]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8, device=codes.device)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `numel` codes, as a flat uint8 tensor."""
    _check_bits(bits)
    packed = packed.reshape(-1)
    if packed.numel() * 8 < numel * bits:
        raise ValueError(f"{packed.numel()} packed bytes cannot hold {numel} codes of {bits} bits")
    step = _CHUNK * bits // 8  # bytes per full chunk
    chunks = []
    for start in range(0, numel, _CHUNK):
        count = min(_CHUNK, numel - start)
        offset = start * bits // 8
        chunks.append(_unpack_chunk(packed[offset : offset + step], bits, count))
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8, device=packed.device)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r} is out of range; allowed: 1..8")


def _pack_chunk(flat: torch.Tensor, bits: int) -> torch.Tensor:
    shifts = torch.arange(bits, dtype=torch.int32, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, (-stream.numel()) % 8))
    weights = 2 ** torch.arange(8, dtype=torch.int32, device=flat.device)
    return (stream.reshape(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def _unpack_chunk(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.int32, device=packed.device)
    stream = ((packed.to(torch.int32)[:, None] >> shifts) & 1).reshape(-1)
    stream = stream[: count * bits].reshape(count, bits)
    weights = 2 ** torch.arange(bits, dtype=torch.int32, device=packed.device)
    return (stream * weights).sum(dim=1).to(torch.uint8)
