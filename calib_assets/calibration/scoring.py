"""Base-model measurements of token rows: per-row perplexity and mean-pooled hidden states.

Forward passes run in the given dtype (bf16 where the hardware has it); padding beyond a row's
`lengths` entry is masked out of the attention and of every statistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _batches(rows: Sequence[Sequence[int]], lengths: Sequence[int] | None, batch_size: int):
    import torch

    lengths = list(lengths) if lengths is not None else [len(row) for row in rows]
    for start in range(0, len(rows), batch_size):
        ids = torch.tensor([list(row) for row in rows[start:start + batch_size]], dtype=torch.long)
        valid = torch.tensor(lengths[start:start + batch_size])
        mask = (torch.arange(ids.shape[1])[None, :] < valid[:, None]).long()
        yield ids, mask


def row_perplexities(model, rows: Sequence[Sequence[int]], *, lengths: Sequence[int] | None = None,
                     batch_size: int = 8, device: str = "cpu", dtype=None) -> np.ndarray:
    """exp(mean next-token NLL) of each row over its first `lengths[i]` tokens (all tokens by default)."""
    import torch

    def perplexity(model, ids, mask):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        predicted = mask[:, 1:].float()
        return torch.exp((nll * predicted).sum(1) / predicted.sum(1).clamp(min=1))

    values = _per_batch(model, rows, lengths, batch_size, device, dtype, perplexity)
    return np.concatenate(values).astype(np.float64) if values else np.zeros(0)


def row_embeddings(model, rows: Sequence[Sequence[int]], *, layer: int = -1, lengths: Sequence[int] | None = None,
                   batch_size: int = 8, device: str = "cpu", dtype=None) -> np.ndarray:
    """Mean over each row's real tokens of one layer's hidden states: [rows, hidden] float64."""

    def mean_state(model, ids, mask):
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                       use_cache=False).hidden_states[layer].float()
        weights = mask.unsqueeze(-1).float()
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1)

    values = _per_batch(model, rows, lengths, batch_size, device, dtype, mean_state)
    return np.concatenate(values).astype(np.float64) if values else np.zeros((0, 0))


def _per_batch(model, rows, lengths, batch_size: int, device: str, dtype, measure) -> list[np.ndarray]:
    """measure(model, ids, mask) of every batch of rows, as numpy arrays."""
    import torch

    model = _prepared(model, device, dtype)
    with torch.inference_mode():
        return [measure(model, ids.to(device), mask.to(device)).cpu().numpy()
                for ids, mask in _batches(rows, lengths, batch_size)]


def _prepared(model, device: str, dtype):
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device).eval()
