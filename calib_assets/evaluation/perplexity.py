"""Perplexity on held-out text: non-overlapping windows, exp(mean token NLL)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float
    n_tokens: int  # predicted tokens
    n_windows: int


def heldout_token_stream(texts: Sequence[str], tokenizer, max_tokens: int) -> list[int]:
    """Documents joined with the EOS token, cut at max_tokens."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(ids + separator)
        if len(stream) >= max_tokens:
            break
    return stream[:max_tokens]


def perplexity(model, token_stream: Sequence[int], *, seq_len: int, batch_size: int = 8,
               device: str = "cpu") -> PerplexityResult:
    """exp of the mean NLL over every predicted token of the non-overlapping seq_len windows."""
    import torch

    n_windows = len(token_stream) // seq_len
    if n_windows == 0:
        raise ValueError(f"held-out text has {len(token_stream)} tokens, fewer than one window of {seq_len}")
    windows = torch.tensor(token_stream[: n_windows * seq_len], dtype=torch.long).view(n_windows, seq_len)
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            targets = batch[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
            )
            total_nll += nll.item()
            total_tokens += targets.numel()
    mean_nll = total_nll / total_tokens
    if not math.isfinite(mean_nll):
        raise FloatingPointError(f"non-finite mean NLL {mean_nll} over {total_tokens} tokens")
    return PerplexityResult(math.exp(mean_nll), mean_nll, total_tokens, n_windows)
