"""Causal self-attention computed by blocks of queries, for the engine's calibration passes on a CPU in bf16.

PyTorch's CPU flash-attention kernel is slow in 16 bits (about 30% of a SmolLM2 layer's bf16 forward).
Batched matmuls over 8 blocks of queries, each block reading only the keys up to its last query (the
causal mask hides the rest), are faster at every measured shape (docs/benchmarks.md). In fp32
PyTorch's kernel was as fast or faster at 2,048 tokens, so fp32 passes keep it. The math is eager
attention's, rounding for rounding: scores and their scaling in the forward dtype, the softmax computed in
fp32 and rounded once to the forward dtype for the weighted sum. The query heads that share a key/value
head (grouped-query attention) are stacked into one matmul instead of repeating the keys.

`blocked_causal_attention` is registered with transformers' attention interface under `BLOCKED_CAUSAL`. It takes
only the plain case: 16-bit causal self-attention on the CPU with no mask tensor, no dropout and no extra
feature (sliding window, softcap, sinks); every other call goes to transformers' own SDPA path unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

BLOCKED_CAUSAL = "calib_assets_blocked_causal"
QUERY_BLOCKS, MIN_QUERY_BLOCK = 8, 64  # 8 blocks of queries, of at least 64 rows (fastest at 512 and 2,048 tokens)
_PLAIN_KWARGS = {"position_ids", "cache", "use_cache", "past_key_values", "cache_position"}  # set in the plain case


def blocked_causal_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [B, H, T, D], key/value [B, KV, T, D] ->
    (output [B, T, H, D], None)."""
    if not _is_plain_causal(module, query, key, attention_mask, dropout, is_causal, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return causal_attention_by_query_blocks(query, key, value, scale), None


def causal_attention_by_query_blocks(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                     scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) v for query [B, H, T, D], key/value [B, KV, T, D] with H a
    multiple of KV; output [B, T, H, D]."""
    batch, heads, tokens, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    rows = batch * kv_heads
    queries = query.reshape(rows, group, tokens, dim)  # the query heads of one key/value head, together
    keys, values = key.reshape(rows, tokens, dim), value.reshape(rows, tokens, dim)
    out = torch.empty(rows, group, tokens, dim, dtype=query.dtype, device=query.device)
    step = max(MIN_QUERY_BLOCK, -(-tokens // QUERY_BLOCKS))
    hidden_ahead = torch.full((step, step), float("-inf"), dtype=query.dtype, device=query.device).triu_(1)
    for start in range(0, tokens, step):
        end = min(start + step, tokens)
        size = end - start
        block = queries[:, :, start:end].reshape(rows, group * size, dim)
        scores = torch.bmm(block, keys[:, :end].transpose(1, 2)).view(rows, group, size, end).mul_(scale)
        scores[..., start:end] += hidden_ahead[:size, :size]
        # PyTorch's softmax of 16-bit scores computes in fp32 and rounds its output once: eager's
        # softmax(dtype=float32).to(dtype) in one pass, without an fp32 copy of the scores
        weights = torch.softmax(scores, dim=-1).view(rows, group * size, end)
        out[:, :, start:end] = torch.bmm(weights, values[:, :end]).view(rows, group, size, dim)
    return out.view(batch, heads, tokens, dim).transpose(1, 2).contiguous()


def _is_plain_causal(module, query, key, attention_mask, dropout, is_causal, kwargs) -> bool:
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    extras = {name for name, value in kwargs.items() if value is not None and value is not False}
    return (
        attention_mask is None
        and causal
        and not dropout
        and query.device.type == "cpu"
        and query.element_size() == 2  # in fp32, PyTorch's kernel was faster at 2,048 tokens (docs/benchmarks.md)
        and query.shape[2] == key.shape[2] > 1
        and query.shape[1] % key.shape[1] == 0
        and key.shape[-1] == query.shape[-1]
        and not (extras - _PLAIN_KWARGS)  # e.g. a sliding window, a softcap, attention sinks
    )


@contextlib.contextmanager
def calibration_attention(model: nn.Module) -> Iterator[None]:
    """Within the block, a model that runs SDPA attention runs `blocked_causal_attention` instead, which
    hands every call it does not take (another device, fp32, a mask...) back to SDPA; any other
    implementation is left alone. Switch it only after the decoder's inputs were captured: the attention
    masks are built under the model's own implementation."""
    config: Any = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    from transformers import AttentionInterface

    AttentionInterface.register(BLOCKED_CAUSAL, blocked_causal_attention)
    config._attn_implementation = BLOCKED_CAUSAL
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
