"""Comparison of a compressed model with its dense model beyond accuracy (Dutta et al., 2024):
answer flips on the same examples and the next-token KL divergence on the same token windows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _as_mapping(correct: Mapping[int, bool] | Sequence[bool], name: str) -> dict[Any, bool]:
    if isinstance(correct, Mapping):
        return {key: bool(value) for key, value in correct.items()}
    if isinstance(correct, (str, bytes)):
        raise TypeError(f"{name} must be a mapping doc index -> bool or a sequence of bools")
    return {index: bool(value) for index, value in enumerate(correct)}


def answer_flips(dense_correct: Mapping[int, bool] | Sequence[bool],
                 compressed_correct: Mapping[int, bool] | Sequence[bool]) -> dict[str, Any]:
    """Examples whose correctness differs between the dense and the compressed model.

    Inputs: doc index -> correct (as in `HarnessResult.correct[task][metric]`) or aligned bool lists;
    both must cover the same examples. share = flips / examples (0 <= share <= 1).
    """
    dense = _as_mapping(dense_correct, "dense_correct")
    compressed = _as_mapping(compressed_correct, "compressed_correct")
    if dense.keys() != compressed.keys():
        only_dense = sorted(dense.keys() - compressed.keys(), key=str)[:5]
        only_compressed = sorted(compressed.keys() - dense.keys(), key=str)[:5]
        raise ValueError(
            f"dense and compressed results cover different examples ({len(dense)} vs {len(compressed)}; "
            f"only dense: {only_dense}, only compressed: {only_compressed})"
        )
    if not dense:
        raise ValueError("no examples to compare")
    correct_to_wrong = sum(1 for key in dense if dense[key] and not compressed[key])
    wrong_to_correct = sum(1 for key in dense if not dense[key] and compressed[key])
    flips = correct_to_wrong + wrong_to_correct
    return {
        "flips": flips,
        "correct_to_wrong": correct_to_wrong,
        "wrong_to_correct": wrong_to_correct,
        "n_examples": len(dense),
        "share": flips / len(dense),
    }


def kl_from_logits(p_logits, q_logits):
    """Per-position KL(P || Q) = sum_v p_v (log p_v - log q_v), from logits, in fp32 (.. x vocab -> ..)."""
    import torch

    log_p = torch.log_softmax(p_logits.float(), dim=-1)
    log_q = torch.log_softmax(q_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def next_token_kl(dense_model, compressed_model, token_windows, batch_size: int = 8, *,
                  device: str = "cpu") -> float:
    """Mean KL(dense || compressed) of the next-token distributions over every position of every window.

    `token_windows`: an (n, seq_len) integer tensor or a list of equal-length token lists. Each model runs
    in its own dtype; log-softmax and the KL are computed in fp32.
    """
    import torch

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} must be an integer >= 1")
    windows = torch.as_tensor(token_windows, dtype=torch.long)
    if windows.dim() != 2 or windows.numel() == 0:
        raise ValueError(f"token_windows must be a non-empty (n, seq_len) array; got shape {tuple(windows.shape)}")
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            p_logits = dense_model(input_ids=batch, use_cache=False).logits
            q_logits = compressed_model(input_ids=batch, use_cache=False).logits
            if p_logits.shape != q_logits.shape:
                raise ValueError(
                    f"the models disagree on logits shape: {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}"
                )
            kl = kl_from_logits(p_logits, q_logits)
            total += kl.double().sum().item()
            count += kl.numel()
    mean = total / count
    if not math.isfinite(mean):
        raise FloatingPointError(f"non-finite mean KL {mean} over {count} positions")
    return max(mean, 0.0)
