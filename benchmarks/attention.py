"""The engine's blocked causal attention against PyTorch's SDPA on this CPU, at SmolLM2-135M's head layout
(9 query heads, 3 key/value heads, head dim 64): per shape, the best of 6 rounds of 10 calls, the two
kernels alternating every 3 rounds.

    .venv/bin/python benchmarks/attention.py [--dtype float32|bfloat16]

The engine takes the blocked kernel only for 16-bit passes on a CPU (`compression/attention.py`); this
prints the figures behind that rule. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from calib_assets.compression.attention import causal_attention_by_query_blocks

SHAPES = [(4, 128), (4, 512), (8, 512), (2, 2048)]  # (batch, tokens)
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def best_ms(fn, rounds: int = 3, calls: int = 10) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - started) / calls * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    dtype = getattr(torch, parser.parse_args().dtype)
    generator = torch.Generator().manual_seed(0)
    scale = HEAD_DIM**-0.5
    print(f"{'shape':<14} {'sdpa ms':>8} {'blocked ms':>10}   ({dtype})")
    for batch, tokens in SHAPES:
        q, k, v = (torch.randn(batch, heads, tokens, HEAD_DIM, generator=generator).to(dtype)
                   for heads in (HEADS, KV_HEADS, KV_HEADS))

        def sdpa(q=q, k=k, v=v):  # this iteration's tensors
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)

        def blocked(q=q, k=k, v=v):
            return causal_attention_by_query_blocks(q, k, v, scale)

        gap = (blocked().float() - sdpa().transpose(1, 2).float()).abs().max()
        if gap > (1e-4 if dtype == torch.float32 else 5e-2):
            raise SystemExit(f"{batch} x {tokens}: the kernels disagree by {gap:.2e}")
        timings = {"sdpa": float("inf"), "blocked": float("inf")}
        for _ in range(2):  # interleaved, so that a drift of the machine's speed hits both
            for name, fn in (("sdpa", sdpa), ("blocked", blocked)):
                timings[name] = min(timings[name], best_ms(fn))
        print(f"{batch} x {tokens:<10} {timings['sdpa']:8.1f} {timings['blocked']:10.1f}")


if __name__ == "__main__":
    main()
