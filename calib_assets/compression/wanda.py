"""Wanda (Sun et al., 2024): prune by |W_ij| * ||X_j||_2, compared within each output row; no update."""

from __future__ import annotations

import time
from typing import Any

import torch

from .config import WandaConfig, check_finite, check_finite_statistic, weight_shape_of
from .magnitude import apply_mask, lowest_mask, nm_mask
from .packing import packed
from .result import CompressedLinear


class Wanda:
    def __init__(self, config: WandaConfig, layer: Any):
        self.config = config
        self.rows, self.columns = weight_shape_of(layer)
        self.sq_norm: torch.Tensor | None = None  # running mean over tokens of x_j^2, per input feature j
        self.ntokens = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        x = inp.detach().reshape(-1, self.columns).float()
        sq_sum = x.square().sum(dim=0)
        check_finite_statistic("calibration input", sq_sum, x)
        if self.sq_norm is None:
            self.sq_norm = torch.zeros(self.columns, dtype=torch.float32, device=x.device)
        total = self.ntokens + x.shape[0]
        self.sq_norm.mul_(self.ntokens / total).add_(sq_sum / total)
        self.ntokens = total

    def compress(self, weight: torch.Tensor) -> CompressedLinear:
        start = time.perf_counter()
        if self.sq_norm is None:
            raise RuntimeError("Wanda needs calibration inputs: add_batch was never called")
        w = weight.detach().float()
        check_finite("weight", w)
        metric = w.abs() * self.sq_norm.to(w.device).sqrt()[None, :]
        cfg = self.config
        if cfg.sparsity is not None:
            mask = lowest_mask(metric, cfg.sparsity)
        else:
            assert cfg.n is not None and cfg.m is not None  # N:M (the config holds sparsity or n and m)
            mask = nm_mask(metric, cfg.n, cfg.m)
        return CompressedLinear(
            weight=apply_mask(w, mask),
            packed_mask=packed(mask),
            info={"seconds": time.perf_counter() - start, "tokens": self.ntokens},
        )
