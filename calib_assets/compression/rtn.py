"""Round-to-nearest (RTN) quantization: the GPTQ quantizer applied to the weights directly, no data."""

from __future__ import annotations

import time
from typing import Any

import torch

from .config import CompressedLinear, RTNConfig, check_finite, weight_shape_of
from .quantizer import dequantize, quantize_grouped


class RTN:
    def __init__(self, config: RTNConfig, layer: Any):
        self.config = config
        self.rows, self.columns = weight_shape_of(layer)

    def add_batch(self, inp: torch.Tensor) -> None:
        """RTN needs no data."""

    def compress(self, weight: torch.Tensor) -> CompressedLinear:
        start = time.perf_counter()
        w = weight.detach().float()
        check_finite("weight", w)
        cfg = self.config
        codes, scales, zeros = quantize_grouped(w, cfg.bits, cfg.group_size, cfg.symmetric)
        return CompressedLinear(
            weight=dequantize(codes, scales, zeros, cfg.group_size),
            codes=codes,
            scales=scales,
            zeros=zeros,
            bits=cfg.bits,
            group_size=cfg.group_size,
            info={"seconds": time.perf_counter() - start},
        )
