"""The reference random-window sampler, extended to disjoint sets.

GPTQ/SparseGPT/Wanda draw calibration data with a seeded `random.Random`: pick a random document,
reject it if it is shorter than seq_len tokens, take one random seq_len-token window of it. The paper
draws several non-overlapping sets per source. Here the seeded RNG orders the eligible documents once
(the equivalent of drawing them without replacement) and draws one window offset per document in that
order; set k is the k-th block of n_samples documents. Adding set k+1 therefore never changes sets
0..k, and sets of different indices never share a document.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class SourceTooSmallError(ValueError):
    """The source cannot give the requested number of disjoint sets."""


@dataclass(frozen=True)
class Window:
    doc_id: str
    offset: int
    token_ids: tuple[int, ...]


def eligible_documents(token_lengths: Mapping[str, int], seq_len: int) -> list[str]:
    """Documents long enough for one window, in a canonical (sorted) order."""
    return sorted(doc_id for doc_id, length in token_lengths.items() if length >= seq_len)


def check_capacity(n_eligible: int, *, source: str, seq_len: int, n_samples: int, seeds: Sequence[int]) -> None:
    needed = (max(seeds) + 1) * n_samples
    if n_eligible < needed:
        raise SourceTooSmallError(
            f"source {source!r} has {n_eligible} calibration documents of at least {seq_len} tokens, but seeds "
            f"{sorted(seeds)} of {n_samples} samples need {needed} (seed k uses the k-th disjoint block); "
            f"lower n_samples or seq_len, use fewer seeds, or pick a larger source"
        )


def sample_windows(
    documents: Mapping[str, Sequence[int]],
    *,
    seq_len: int,
    n_samples: int,
    seed: int,
    sampler_seed: int = 0,
    source: str = "source",
) -> list[Window]:
    """Set number `seed` of the source: n_samples windows from n_samples distinct documents."""
    if seq_len < 1 or n_samples < 1 or seed < 0:
        raise ValueError(f"need seq_len >= 1, n_samples >= 1, seed >= 0; got {seq_len}, {n_samples}, {seed}")
    eligible = eligible_documents({doc_id: len(ids) for doc_id, ids in documents.items()}, seq_len)
    check_capacity(len(eligible), source=source, seq_len=seq_len, n_samples=n_samples, seeds=[seed])
    rng = random.Random(sampler_seed)
    rng.shuffle(eligible)
    windows = []
    for position, doc_id in enumerate(eligible[: (seed + 1) * n_samples]):
        ids = documents[doc_id]
        offset = rng.randint(0, len(ids) - seq_len)
        if position >= seed * n_samples:
            windows.append(Window(doc_id, offset, tuple(ids[offset : offset + seq_len])))
    return windows
