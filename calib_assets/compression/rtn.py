"""Round-to-nearest (RTN) quantization: the GPTQ quantizer applied to the weights directly, no data."""

from __future__ import annotations

import time

import torch

from .config import DataFree, RTNConfig, check_finite
from .quantizer import quantize_grouped, quantized_linear
from .result import CompressedLinear


class RTN(DataFree):
    config: RTNConfig

    def compress(self, weight: torch.Tensor) -> CompressedLinear:
        start = time.perf_counter()
        w = weight.detach().float()
        check_finite("weight", w)
        cfg = self.config
        codes, scales, zeros = quantize_grouped(w, cfg.bits, cfg.group_size, cfg.symmetric)
        return quantized_linear(codes, scales, zeros, cfg.bits, cfg.group_size,
                                {"seconds": time.perf_counter() - start})
