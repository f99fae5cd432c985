"""Device and dtype choice: CUDA when present, else CPU; forward passes in bf16 where the hardware runs
it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), fp16 on older GPUs, fp32 on other CPUs."""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(preference: str = "auto") -> str:
    import torch

    if preference not in DEVICES:
        raise ValueError(f"device {preference!r} is not allowed; allowed: {list(DEVICES)}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def resolve_forward_dtype(preference: str, device: str):
    """The dtype of forward passes; compression math stays in float32 regardless."""
    import torch

    if preference not in DTYPES:
        raise ValueError(f"forward_dtype {preference!r} is not allowed; allowed: {list(DTYPES)}")
    if preference != "auto":
        return getattr(torch, preference)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX). Without them PyTorch emulates
    bf16 matmuls, which on an AVX2 machine runs about 8x slower than fp32 (benchmarks/compression.py)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
