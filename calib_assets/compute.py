"""Device and dtype choice: CUDA when present, else CPU; forward passes in bf16 where supported."""

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
    return torch.bfloat16
