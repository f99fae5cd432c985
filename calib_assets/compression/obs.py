"""The second-order (Optimal Brain Surgeon) machinery that GPTQ, SparseGPT and SpQR share.

- `HessianCompressor` accumulates H = 2 X X^T / n of a linear's calibration inputs X (`add_gram`).
- `inverse_hessian_factor` gives U, the upper Cholesky factor of (H + damping I)^-1: row i of U, divided
  by U[i, i], is the optimal update of the columns after i once column i is fixed.
- `obs_blocks` walks the columns in blocks: inside a block, each processed column's error moves the
  block's later columns at once (`ObsBlock`); the whole block's errors then move every later column in
  one matmul (the lazy batch update of GPTQ).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..compute import fp32_matmuls_on_bf16_units, on_bf16_units
from .config import all_finite, check_finite, check_finite_statistic, weight_shape_of

MAX_DAMPING_RETRIES = 12
GRAM_BLOCK = 384  # most columns per block row of the Hessian update
BF16_SINGLE_BLOCK = 1024  # on bf16 units, up to this many columns take one full matmul


class HessianCompressor:
    """Accumulates H = 2 X X^T / n from a linear's inputs; the base of GPTQ, SparseGPT and SpQR."""

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
        H = self.H
        assert H is not None  # add_batch was called (checked above)
        H = H.to(W.device)
        check_finite("Hessian", H)
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        self._gram = None  # free the statistics; a compressor is used once
        return W, H, dead


def add_gram(gram: torch.Tensor, x: torch.Tensor, alpha: float, beta: float, bf16_values: bool = False) -> None:
    """gram <- beta * gram + alpha * x^T x in the upper triangle (and some blocks below it).

    One matmul per block row, from its diagonal block rightwards: (k + 1) / 2k of a full matmul's flops
    for k blocks (`gram_block`). It matters because for a down_proj the Hessian costs more than the
    layer's own forward pass (timings: docs/benchmarks.md, "The second-order machinery").

    `bf16_values`: every entry of x is a bf16 value (the input of a bf16 forward pass, cast to fp32).
    oneDNN then runs the fp32 matmuls on the CPU's bf16 units (AMX, AVX512-BF16): the casts back to bf16
    are exact, each product of two bf16 values is exact in fp32 and the sums are accumulated and
    returned in fp32, so H is as exact as with fp32 units, in a fraction of the time.
    """
    columns = gram.shape[0]
    block = gram_block(columns, bf16_values)
    with fp32_matmuls_on_bf16_units(bf16_values):
        for r0 in range(0, columns, block):
            r1 = min(r0 + block, columns)
            gram[r0:r1, r0:].mul_(beta).addmm_(x[:, r0:r1].T, x[:, r0:], alpha=alpha)


def gram_block(columns: int, bf16_values: bool) -> int:
    """Rows per block row of `add_gram`: GRAM_BLOCK, or a third of the columns when that is less (fewer
    flops than two blocks); on bf16 units one full matmul up to BF16_SINGLE_BLOCK columns (each call casts
    its operands again)."""
    block = min(GRAM_BLOCK, -(-columns // 3))
    if bf16_values and columns <= BF16_SINGLE_BLOCK:
        block = columns
    return block


def symmetric_from_upper(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    upper = torch.ones(n, n, dtype=torch.bool, device=matrix.device).triu_()
    return torch.where(upper, matrix, matrix.T)


def inverse_hessian_factor(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor U of (H + damping I)^-1, with damping = percdamp * mean(diag H) to start;
    until the factorization works, damping grows x10 (from 0: to 1e-6 * mean diag first).
    Returns (U, damping, retries)."""
    diag_mean = float(torch.diag(H).mean())
    damping = percdamp * diag_mean
    floor = 1e-6 * max(abs(diag_mean), 1e-12)  # a start when percdamp is 0 and H is singular
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for retries in range(MAX_DAMPING_RETRIES + 1):
        U = upper_cholesky_of_inverse(H + damping * eye, eye)
        if U is not None:
            return U, damping, retries
        damping = max(damping * 10, floor)
    raise FloatingPointError(
        f"Hessian is not positive definite even with damping {damping:.3g} "
        f"after {MAX_DAMPING_RETRIES} increases (mean diag {diag_mean:.3g})"
    )


def upper_cholesky_of_inverse(A: torch.Tensor, eye: torch.Tensor) -> torch.Tensor | None:
    """U upper triangular with U^T U = A^-1, or None when A is not (numerically) positive definite.

    Without forming A^-1, which is faster and closer to fp64: with J the reversal permutation and
    J A J = L L^T, U = J L^-1 J, since U^T U = J L^-T L^-1 J = A^-1 (one Cholesky, one triangular solve).
    """
    L, info = torch.linalg.cholesky_ex(A.flip(0, 1))
    if int(info) != 0:
        return None
    U = torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)
    return U if all_finite(U) else None


class ObsBlock:
    """One block of columns [i1, i2) of the OBS column loop.

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

    def columns(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per column i of the block: (w, err, tail, step), views of W1t[i], Err1t[i], W1t[i:] and
        U[i, i..] / U[i, i]. A loop that writes the error into `err` moves the later columns with
        `tail.addr_(step, err, alpha=-1)` (what `feed_back` does)."""
        return zip(self.W1t, self.Err1t, self.tails, self.steps)

    def feed_back(self, i: int, err: torch.Tensor) -> None:
        """Column i's error err = w - q moves the block's columns i.. by -err U[i, i..] / U[i, i]."""
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
