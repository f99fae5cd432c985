"""SparseGPT (Frantar & Alistarh, 2023): prune a linear column by column with GPTQ's machinery, each
pruned weight's removal compensated in the columns not yet processed through the inverse Hessian.

The OBS saliency of weight (r, j) is w_rj^2 / [H^-1]_jj^2 with the same upper Cholesky factor U of H^-1
as GPTQ (U[j, j]^2 stands for [H^-1]_jj of the columns still to process). Unstructured: at each block
start the lowest `sparsity` fraction of the block's scores, over the whole block, is pruned. N:M: at
every m-th column, the n lowest scores of each row among the next m columns are pruned. Column i's error
(the pruned weights, or w - q with joint quantization) then moves the later columns as in GPTQ. Joint
quantization rounds the kept weights on GPTQ's grid (fitted on the updated weights at each group start)
and pins the pruned ones to the zero point, so they dequantize to exactly 0.
"""

from __future__ import annotations

import time

import torch

from .config import SparseGPTConfig
from .magnitude import apply_mask, lowest_mask, nm_keep_columns
from .obs import HessianCompressor, inverse_hessian_factor, obs_blocks
from .packing import packed
from .quantizer import dequantize, fit_params
from .result import CompressedLinear


class SparseGPT(HessianCompressor):
    config: SparseGPTConfig
    name = "SparseGPT"

    def compress(self, weight: torch.Tensor) -> CompressedLinear:
        start = time.perf_counter()
        cfg = self.config
        W, H, dead = self._weight_and_hessian(weight)
        U, damping, retries = inverse_hessian_factor(H, cfg.percdamp)
        Q, mask, codes, scales, zeros = self._prune_columns(W, U)
        info = {"seconds": time.perf_counter() - start, "damping": damping, "damping_retries": retries,
                "dead_inputs": int(dead.sum()), "tokens": self.nsamples}
        if cfg.bits is None:
            return CompressedLinear(weight=apply_mask(Q, mask), packed_mask=packed(mask), info=info)
        weight = apply_mask(dequantize(codes, scales, zeros, cfg.group_size), mask)
        return CompressedLinear(weight=weight, packed_codes=packed(codes), scales=scales, zeros=zeros,
                                bits=cfg.bits, group_size=cfg.group_size, packed_mask=packed(mask), info=info)

    def _prune_columns(self, W: torch.Tensor, U: torch.Tensor):
        cfg = self.config
        rows, cols = W.shape
        quantized = cfg.bits is not None
        maxq = 2 ** (cfg.bits or 1) - 1
        group = cfg.group_size or cols
        Q_t = torch.zeros(cols, rows, device=W.device)  # transposed: one contiguous row per column
        mask = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
        codes_t = torch.zeros_like(Q_t) if quantized else None
        scales = torch.zeros(rows, cols // group, device=W.device) if quantized else None
        zeros = torch.zeros_like(scales) if scales is not None else None  # quantized
        scale: torch.Tensor  # the grid of the current group: set at column 0 (a group start) and after
        zero: torch.Tensor
        nothing = torch.zeros((), device=W.device)
        nm = cfg.sparsity is None
        n, m = cfg.n or 0, cfg.m or 0  # read for N:M only, where the config holds both (1 <= n < m)

        for block in obs_blocks(W, U, cfg.blocksize):
            i1, i2 = block.i1, block.i2
            inv_d2 = 1 / block.d**2
            if cfg.sparsity is None:  # N:M
                mask1t = torch.ones_like(block.W1t, dtype=torch.bool)  # transposed, like W1t
            else:
                mask1t = block_mask(block.W1t, inv_d2, cfg.sparsity)
            columns = zip(block.columns(), Q_t[i1:i2], mask1t)
            for i, ((w, err, tail, step), q, keep) in enumerate(columns):
                col = i1 + i
                if nm and i % m == 0:  # keep: a view of mask1t, so it sees this assignment
                    score = block.W1t[i : i + m].square().mul_(inv_d2[i : i + m, None])
                    nm_keep_columns(score, n, out=mask1t[i : i + m])
                if quantized:
                    assert cfg.bits is not None and codes_t is not None and scales is not None and zeros is not None
                    torch.where(keep, w, nothing, out=q)  # the pruned weights are 0
                    if col % group == 0:
                        scale, zero = fit_params(block.current_group(W, i, col + group), cfg.bits, cfg.symmetric)
                        scales[:, col // group], zeros[:, col // group] = scale, zero
                    c = torch.where(keep, torch.clamp(torch.round(q / scale) + zero, 0, maxq), zero)
                    codes_t[col] = c
                    torch.sub(c, zero, out=q).mul_(scale)
                    torch.sub(w, q, out=err)  # in place into the error row
                else:
                    torch.where(keep, nothing, w, out=err)  # a pruned weight is its own error
                tail.addr_(step, err, alpha=-1)  # the block's later columns k: w_k -= err U[i, k] / U[i, i]
            if not quantized:
                # Each processed row w became w - 1 * err (the step's first entry is U[i, i] / U[i, i] = 1):
                # exactly w where kept, exactly +0.0 where pruned.
                Q_t[i1:i2] = block.W1t
            mask[:, i1:i2] = mask1t.T
        codes = codes_t.T.to(torch.uint8).contiguous() if codes_t is not None else None  # quantized
        return Q_t.T.contiguous(), mask, codes, scales, zeros


def block_mask(W1t: torch.Tensor, inv_d2: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask of one block (transposed, like `W1t` [block, rows]) for unstructured sparsity: exactly
    floor(sparsity * block size) of the scores w^2 / U_jj^2 pruned over the whole block, ties broken by
    position (the reference's `score <= sorted[k]` prunes one more, and one even at sparsity 0)."""
    score = W1t.T**2 * inv_d2  # [rows, block]
    return lowest_mask(score.reshape(1, -1), sparsity).reshape(score.shape).T.contiguous()
