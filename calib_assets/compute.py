"""Device and dtype choice: CUDA when present, else CPU; forward passes in bf16 where the hardware runs
it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), fp16 on older GPUs, fp32 on other CPUs."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

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


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX). Without them PyTorch emulates
    bf16 matmuls, which on an AVX2 machine ran about 8x slower than fp32 (docs/benchmarks.md). Asked once
    per process (the probes take about 0.7 ms, and the Hessian accumulation asks per batch)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def on_bf16_units(tensor) -> bool:
    """Whether `tensor` holds bf16 values on a CPU with bf16 matrix units: fp32 matmuls of its values
    (cast to fp32) can then run on those units exactly (`fp32_matmuls_on_bf16_units`)."""
    import torch

    return tensor.dtype == torch.bfloat16 and tensor.device.type == "cpu" and cpu_has_native_bf16()


@contextlib.contextmanager
def fp32_matmuls_on_bf16_units(enabled: bool = True) -> Iterator[None]:
    """oneDNN runs fp32 matmuls on the CPU's bf16 units (AMX, AVX512-BF16): operands cast to bf16,
    products accumulated and returned in fp32. Exact only where the operands hold bf16 values (the
    inputs of a bf16 forward pass, cast to fp32): each product of two bf16 values is exact in fp32.
    A process-wide setting, restored on exit."""
    if not enabled:
        yield
        return
    import torch

    matmul = torch.backends.mkldnn.matmul  # type: ignore[attr-defined]  # torch's stubs lack the fp32_precision API
    previous, matmul.fp32_precision = matmul.fp32_precision, "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = previous


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_allocator_tuned = False
_libc = None


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse rather than hand it back to the kernel.

    By default every tensor over ~32 MB is its own mmap, unmapped on free, so the next batch's activations
    page-fault and are zeroed by the kernel all over again. Serving them from the heap instead, which is
    trimmed only above 2 GB of free top, cut a 4-layer GPTQ run on SmolLM2 by 12-14% (system time 4.3 s
    -> 1.9 s) here, for the same peak memory. Process-wide and idempotent; returns False where the C
    library is not glibc (nothing changes there).
    """
    global _allocator_tuned, _libc
    if _allocator_tuned:
        return True
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, _ = libc.mallopt, libc.malloc_trim  # both must exist (glibc)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    _libc = libc if _allocator_tuned else None
    return _allocator_tuned


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the kernel (glibc `malloc_trim`), where `reuse_freed_memory`
    holds them. Called between decoder layers and between the phases of one (statistics, each group's
    compression): freed blocks then stop piling up in the heap, whose fragments otherwise raised a
    30-layer GPTQ run's peak from about 0.8 to 1.5 GB from one run to the next, at the cost of a round of
    page faults per phase instead of one per batch. Returns whether anything could be done."""
    if _libc is None:
        return False
    _libc.malloc_trim(0)
    return True
