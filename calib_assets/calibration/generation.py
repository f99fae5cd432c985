"""Self-generated calibration data: the base model writes its own text (self-calibration).

From BOS (Williams et al., 2025), or continuing short prefixes of a source's documents (Ji et al., 2025),
then a perplexity filter under the same model drops the least natural generations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]  # prefix + generated tokens
    prefix_tokens: int
    perplexity: float


def prompts(tokenizer, n_documents: int, prefixes: Sequence[Sequence[int]] | None = None,
            prefix_tokens: int = 16) -> list[list[int]]:
    """One prompt per document: BOS alone, or the first `prefix_tokens` tokens of prefix document i mod len."""
    if prefixes:
        usable = [list(ids[:prefix_tokens]) for ids in prefixes if len(ids) > 0]
        if not usable:
            raise ValueError("every prefix document is empty; give a prefix_source with text")
        return [usable[i % len(usable)] for i in range(n_documents)]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start generation from")
    return [[bos] for _ in range(n_documents)]


def generate(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 0.95, seed: int = 0, batch_size: int = 8, device: str = "cpu") -> list[list[int]]:
    """Sampled continuations (prompt + new tokens) of each prompt; deterministic per seed.

    Prompts of a batch share a length (they come from prompts() in groups), so no padding is needed;
    batches of unequal lengths are split into equal-length groups.
    """
    import torch

    model = model.to(device).eval()
    outputs: list[list[int] | None] = [None] * len(prompt_ids)
    groups: dict[int, list[int]] = {}
    for index, ids in enumerate(prompt_ids):
        groups.setdefault(len(ids), []).append(index)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for length in sorted(groups):
        members = groups[length]
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            torch.manual_seed(seed * 1_000_003 + length * 7919 + start)
            batch_ids = torch.tensor([list(prompt_ids[i]) for i in batch], dtype=torch.long, device=device)
            with torch.inference_mode():
                generated = model.generate(batch_ids, attention_mask=torch.ones_like(batch_ids), do_sample=True,
                                           temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                           pad_token_id=pad)
            for i, row in zip(batch, generated.tolist()):
                outputs[i] = _until_eos(row, length, tokenizer.eos_token_id)
    return outputs  # type: ignore[return-value]


def _until_eos(row: list[int], prompt_length: int, eos: int | None) -> list[int]:
    new = row[prompt_length:]
    if eos is not None and eos in new:
        new = new[: new.index(eos)]
    return row[:prompt_length] + new


def perplexity_filter(perplexities: Sequence[float] | np.ndarray, *, max_perplexity: float | None = None,
                      keep_fraction: float = 1.0) -> list[int]:
    """Indices kept (in input order): perplexity <= max_perplexity, then the lowest ceil(keep_fraction * n)."""
    values = np.asarray(perplexities, dtype=np.float64)
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction {keep_fraction!r} must be in (0, 1]")
    candidates = [i for i in range(len(values)) if np.isfinite(values[i])
                  and (max_perplexity is None or values[i] <= max_perplexity)]
    keep = int(np.ceil(keep_fraction * len(candidates)))
    ranked = sorted(candidates, key=lambda i: (values[i], i))[:keep]
    return sorted(ranked)


def self_generate(model, tokenizer, *, n_documents: int, max_new_tokens: int, prefixes=None, prefix_tokens: int = 16,
                  temperature: float = 1.0, top_p: float = 0.95, seed: int = 0, max_perplexity: float | None = None,
                  keep_fraction: float = 1.0, batch_size: int = 8, device: str = "cpu",
                  score_dtype=None) -> tuple[list[Generation], dict]:
    """Generate, score each generation's perplexity under the model, filter; return (kept, statistics)."""
    prompt_ids = prompts(tokenizer, n_documents, prefixes, prefix_tokens)
    rows = generate(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_p=top_p, seed=seed, batch_size=batch_size, device=device)
    perplexities = np.array([_row_perplexity(model, row, device, score_dtype) for row in rows])
    kept = perplexity_filter(perplexities, max_perplexity=max_perplexity, keep_fraction=keep_fraction)
    generations = [Generation(tokenizer.decode(rows[i][len(prompt_ids[i]):] if not prefixes else rows[i],
                                               skip_special_tokens=True),
                              tuple(rows[i]), len(prompt_ids[i]), float(perplexities[i])) for i in kept]
    finite = perplexities[np.isfinite(perplexities)]
    stats = {"generated": len(rows), "kept": len(kept),
             "perplexity_median_all": float(np.median(finite)) if finite.size else None,
             "perplexity_max_kept": max((g.perplexity for g in generations), default=None)}
    return generations, stats


def _row_perplexity(model, row: list[int], device: str, dtype) -> float:
    from calib_assets.calibration.scoring import row_perplexities

    if len(row) < 2:
        return float("nan")
    return float(row_perplexities(model, [row], device=device, dtype=dtype)[0])
