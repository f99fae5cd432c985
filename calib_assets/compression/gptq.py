"""GPTQ (Frantar et al., 2023): quantize a linear column by column, feeding each column's rounding error
back into the columns not yet quantized through the inverse Hessian of the layer-wise squared error.

H = 2 X X^T / n over the calibration tokens; U = upper Cholesky factor of (H + damping I)^-1 (`obs`).
For each block of columns, for each column i: at a group start, fit the group's grid on its current
weights; q = quant(w_i); err = w_i - q; the block's later columns k move by -err U[i, k] / U[i, i]. Once
the block is done, its errors move every later column in one matmul (the lazy batch update).

act_order processes the columns by descending diag(H) (the inputs with most energy first); without
static groups a group is then a run of `group_size` consecutive columns in that order, and `g_idx` maps
each original column to its group. static_groups fits every group's grid on the original weights
before the loop, groups being runs of columns in the original order.
"""

from __future__ import annotations

import time

import torch

from .config import GPTQConfig
from .obs import HessianCompressor, inverse_hessian_factor, obs_blocks
from .quantizer import fit_params, quantize_grouped, quantized_linear
from .result import CompressedLinear


class GPTQ(HessianCompressor):
    config: GPTQConfig

    def compress(self, weight: torch.Tensor) -> CompressedLinear:
        start = time.perf_counter()
        cfg = self.config
        W, H, dead = self._weight_and_hessian(weight)
        cols = W.shape[1]
        group = cfg.group_size or cols

        static = None
        if cfg.static_groups:  # grids of the original (dead-zeroed) weights, groups in original order
            _, static_scales, static_zeros = quantize_grouped(W, cfg.bits, cfg.group_size, cfg.symmetric)
            static = (static_scales, static_zeros)
        perm = torch.arange(cols, device=W.device)
        if cfg.act_order:
            perm = torch.argsort(torch.diag(H), descending=True, stable=True)
            W, H = W[:, perm], H[perm][:, perm]
        U, damping, retries = inverse_hessian_factor(H, cfg.percdamp)

        codes, scales, zeros = self._quantize_columns(W, U, perm, static)
        invperm = torch.argsort(perm)
        codes = codes[:, invperm]
        g_idx = None
        if cfg.act_order and static is None and cfg.group_size:
            g_idx = (invperm // group).to(torch.int32)  # original column -> its group in processing order
        info = {"seconds": time.perf_counter() - start, "damping": damping, "damping_retries": retries,
                "dead_inputs": int(dead.sum()), "tokens": self.nsamples}
        return quantized_linear(codes, scales, zeros, cfg.bits, cfg.group_size, info, g_idx=g_idx)

    def _quantize_columns(
        self, W: torch.Tensor, U: torch.Tensor, perm: torch.Tensor, static: tuple | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes in processing order; grids per group, fitted at each group start unless `static`."""
        cfg = self.config
        rows, cols = W.shape
        maxq = 2**cfg.bits - 1
        group = cfg.group_size or cols
        codes_t = torch.zeros(cols, rows, dtype=torch.float32, device=W.device)  # one contiguous row per column
        if static is None:
            scales = torch.zeros(rows, cols // group, dtype=torch.float32, device=W.device)
            zeros = torch.zeros_like(scales)
        else:
            scales, zeros = static
            group_of = (perm // group).tolist()  # processing position -> original group
            grids = list(zip(scales.T.contiguous(), zeros.T.contiguous()))
        scale: torch.Tensor  # the grid of the current group: set at column 0 (a group start) and after
        zero: torch.Tensor

        for block in obs_blocks(W, U, cfg.blocksize):
            for i, ((w, err, tail, step), c) in enumerate(zip(block.columns(), codes_t[block.i1 : block.i2])):
                col = block.i1 + i
                if static is not None:
                    scale, zero = grids[group_of[col]]
                elif col % group == 0:
                    scale, zero = fit_params(block.current_group(W, i, col + group), cfg.bits, cfg.symmetric)
                    scales[:, col // group], zeros[:, col // group] = scale, zero
                quantize_into(w, scale, zero, maxq, codes=c, error=err)
                tail.addr_(step, err, alpha=-1)  # the block's later columns k: w_k -= err U[i, k] / U[i, i]
        return codes_t.T.to(torch.uint8).contiguous(), scales, zeros


def quantize_into(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int, *, codes: torch.Tensor,
                  error: torch.Tensor) -> None:
    """codes = clamp(round(w / scale) + zero, 0, maxq) and error = w - (codes - zero) scale, written in
    place: `quantize` and `dequantize` with the same arithmetic and no temporaries (the loop's hot path)."""
    torch.div(w, scale, out=codes).round_().add_(zero).clamp_(0, maxq)
    torch.addcmul(w, torch.sub(codes, zero, out=error), scale, value=-1, out=error)
