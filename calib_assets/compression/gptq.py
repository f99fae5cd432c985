"""GPTQ (Frantar et al., 2023): quantize a linear column by column, feeding each column's rounding error
back into the columns not yet quantized through the inverse Hessian of the layer-wise squared error.

H = 2 X X^T / n over the calibration tokens. U = upper Cholesky factor of H^-1, so that row i of U,
divided by U[i, i], is the optimal update of the columns after i when column i is fixed.

act_order processes the columns by descending diag(H) (the inputs with most energy first); without
static groups a group is then a run of `group_size` consecutive columns in that order, and `g_idx` maps
each original column to its group. static_groups fits every group's grid on the original weights
before the loop, groups being runs of columns in the original order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from ..compute import fp32_matmuls_on_bf16_units, on_bf16_units
from .config import (
    CompressedLinear,
    GPTQConfig,
    all_finite,
    check_finite,
    check_finite_statistic,
    weight_shape_of,
)
from .quantizer import fit_params, quantize_grouped, quantized_linear

MAX_DAMPING_RETRIES = 12


class HessianCompressor:
    """Accumulates H = 2 X X^T / n from a linear's inputs; shared by GPTQ, SparseGPT and SpQR."""

    name = "GPTQ"

    def __init__(self, config: Any, layer: Any):
        self.config = config
        self.rows, self.columns = weight_shape_of(layer)
        self._gram: torch.Tensor | None = None  # H, of which only the upper triangle is kept up to date
        self.nsamples = 0  # tokens seen; H is their running average

    @property
    def H(self) -> torch.Tensor | None:
        """The Hessian so far (a symmetric copy of the accumulator), or None before any batch."""
        return None if self._gram is None else symmetric_from_upper(self._gram)

    @H.setter
    def H(self, value: torch.Tensor | None) -> None:
        self._gram = None if value is None else value.detach().float().clone()

    def add_batch(self, inp: torch.Tensor) -> None:
        """Add a batch of the linear's inputs (any float dtype; bf16 inputs from a bf16 forward pass take
        the CPU's bf16 matrix units, see `add_gram`)."""
        x = inp.detach().reshape(-1, self.columns).float()
        if self._gram is None:
            self._gram = torch.zeros(self.columns, self.columns, dtype=torch.float32, device=x.device)
        total = self.nsamples + x.shape[0]
        add_gram(self._gram, x, alpha=2.0 / total, beta=self.nsamples / total, bf16_values=on_bf16_units(inp))
        try:
            # a NaN or Inf anywhere in x, or an overflowing product, reaches the diagonal of x^T x
            check_finite_statistic("calibration input", torch.diagonal(self._gram), x)
        except FloatingPointError:
            self._gram = None  # the statistics are lost: the step fails
            raise
        self.nsamples = total

    def _weight_and_hessian(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """fp32 copies of W and H with dead inputs (diag 0) neutralised: H[d, d] = 1, W[:, d] = 0."""
        if self._gram is None:
            raise RuntimeError(f"{self.name} needs calibration inputs: add_batch was never called")
        W = weight.detach().float().clone()
        check_finite("weight", W)
        H = self.H.to(W.device)
        check_finite("Hessian", H)
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        self._gram = None  # free the statistics; a compressor is used once
        return W, H, dead


GRAM_BLOCK = 384  # most columns per block row of the Hessian update
BF16_SINGLE_BLOCK = 1024  # on bf16 units, up to this many columns take one full matmul


def add_gram(gram: torch.Tensor, x: torch.Tensor, alpha: float, beta: float, bf16_values: bool = False) -> None:
    """gram <- beta * gram + alpha * x^T x in the upper triangle (and some blocks below it).

    One matmul per block row, from its diagonal block rightwards: (k + 1) / 2k of a full matmul's flops
    for k blocks. Blocks are GRAM_BLOCK rows, or a third of the columns when that is less (576 inputs: 3
    blocks of 192, 67%, measured 13 against 15.5 ms per 4,096 tokens with 2 blocks; 1536 inputs: 4 of
    384, 62%, 1.6x faster than the full matmul). It matters because for a down_proj the Hessian costs
    more than the layer's own forward pass. BLAS syrk would halve the flops outright, but on the CPU its
    thread pool fights PyTorch's OpenMP threads and ends up slower.

    `bf16_values`: every entry of x is a bf16 value (the input of a bf16 forward pass, cast to fp32).
    oneDNN then runs the fp32 matmuls on the CPU's bf16 units (AMX, AVX512-BF16): the casts back to bf16
    are exact, each product of two bf16 values is exact in fp32 and the sums are accumulated and
    returned in fp32, so H is as exact as with fp32 units, at a third of the time on an AMX CPU (2,048
    tokens: 5.7 against 17.2 ms for 1536 inputs, 1.2 against 2.7 ms for 576 in one block). Each call
    casts its operands again, so up to BF16_SINGLE_BLOCK columns take one full matmul.
    """
    columns = gram.shape[0]
    block = min(GRAM_BLOCK, -(-columns // 3))
    if bf16_values and columns <= BF16_SINGLE_BLOCK:
        block = columns
    with fp32_matmuls_on_bf16_units(bf16_values):
        for r0 in range(0, columns, block):
            r1 = min(r0 + block, columns)
            gram[r0:r1, r0:].mul_(beta).addmm_(x[:, r0:r1].T, x[:, r0:], alpha=alpha)


def symmetric_from_upper(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    upper = torch.ones(n, n, dtype=torch.bool, device=matrix.device).triu_()
    return torch.where(upper, matrix, matrix.T)


def inverse_hessian_factor(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor U of (H + damping I)^-1; damping grows x10 until the factorization works.

    With J the reversal permutation and J H J = L L^T, U = J L^-1 J: then U^T U = J L^-T L^-1 J = H^-1,
    and U is upper triangular with a positive diagonal. One Cholesky and one triangular solve, without
    forming H^-1 (about half the time of factorizing the explicit inverse, and closer to it in fp64).
    """
    diag_mean = float(torch.diag(H).mean())
    damping = percdamp * diag_mean
    floor = 1e-6 * max(abs(diag_mean), 1e-12)  # a start when percdamp is 0 and H is singular
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for retries in range(MAX_DAMPING_RETRIES + 1):
        L, info = torch.linalg.cholesky_ex((H + damping * eye).flip(0, 1))
        if int(info) == 0:
            U = torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)
            if all_finite(U):
                return U, damping, retries
        damping = max(damping * 10, floor)
    raise FloatingPointError(
        f"Hessian is not positive definite even with damping {damping:.3g} "
        f"after {MAX_DAMPING_RETRIES} increases (mean diag {diag_mean:.3g})"
    )


class ObsBlock:
    """One block of columns [i1, i2) of the OBS column loop shared by GPTQ, SparseGPT and SpQR.

    `W1t` is the block's working copy, transposed (W1t[i] is column i1 + i, contiguous: the loop works
    on one column at a time). A processed column's error e = w - q goes, unscaled, into `Err1t` and moves
    the block's later columns by -e U[i, i..] / U[i, i]: the rows of U are divided by their diagonal once
    (`Us`), which saves the loop a division per column. `obs_blocks` applies the whole block's errors to
    the columns after it (the lazy batch update) once it is done. `d` is U's diagonal in the block.
    """

    __slots__ = ("i1", "i2", "W1t", "Err1t", "Us", "d", "tails", "steps")

    def __init__(self, W: torch.Tensor, Us: torch.Tensor, d: torch.Tensor, i1: int, i2: int):
        self.i1, self.i2 = i1, i2
        self.W1t = W[:, i1:i2].T.contiguous()
        self.Err1t = torch.zeros_like(self.W1t)
        self.Us = Us
        self.d = d[i1:i2]
        n = i2 - i1
        self.tails = [self.W1t[i:] for i in range(n)]  # the views the updates write through, made once
        self.steps = [Us[i1 + i, i1 + i : i2] for i in range(n)]

    def feed_back(self, i: int, err: torch.Tensor) -> None:
        """Column i's error err = w - q moves the block's columns i.. by -err U[i, i..] / U[i, i].
        (The GPTQ and SparseGPT loops write err into Err1t[i] in place and apply the update inline.)"""
        self.Err1t[i] = err
        self.tails[i].addr_(self.steps[i], self.Err1t[i], alpha=-1)

    def current_group(self, W: torch.Tensor, i: int, end: int) -> torch.Tensor:
        """Columns [i1 + i, end) as updated by every column processed so far.

        Inside the block W1t is up to date; beyond it, W still lacks this block's pending lazy update.
        """
        inside = self.W1t[i : end - self.i1].T
        if end <= self.i2:
            return inside
        outside = W[:, self.i2 : end] - self.Err1t[:i].T @ self.Us[self.i1 : self.i1 + i, self.i2 : end]
        return torch.cat([inside, outside], dim=1)


def obs_blocks(W: torch.Tensor, U: torch.Tensor, blocksize: int) -> Iterator[ObsBlock]:
    """The blocks of W's columns in order; after the caller has processed one, the lazy batch update
    carries its errors to every later column of W in one matmul."""
    cols = W.shape[1]
    d = torch.diagonal(U)
    Us = U / d[:, None]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        block = ObsBlock(W, Us, d, i1, i2)
        yield block
        W[:, i2:].addmm_(block.Err1t.T, Us[i1:i2, i2:], alpha=-1)


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
        scale = zero = None

        for block in obs_blocks(W, U, cfg.blocksize):
            rows_of_block = zip(block.W1t, codes_t[block.i1 : block.i2], block.Err1t, block.tails, block.steps)
            for i, (w, c, err, tail, step) in enumerate(rows_of_block):
                col = block.i1 + i
                if static is not None:
                    scale, zero = grids[group_of[col]]
                elif col % group == 0:
                    current = block.current_group(W, i, col + group)
                    scale, zero = fit_params(current, cfg.bits, cfg.symmetric)
                    scales[:, col // group], zeros[:, col // group] = scale, zero
                # The hot path: quantize() and dequantize() inlined with the same arithmetic, in place into
                # the code and error rows (no temporaries): c = clamp(round(w / s) + z), err = w - (c - z) s
                torch.div(w, scale, out=c).round_().add_(zero).clamp_(0, maxq)
                torch.addcmul(w, torch.sub(c, zero, out=err), scale, value=-1, out=err)
                tail.addr_(step, err, alpha=-1)
        return codes_t.T.to(torch.uint8).contiguous(), scales, zeros
