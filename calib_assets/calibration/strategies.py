"""Sampling strategies: how a source's tokenized documents become n_samples rows of seq_len tokens.

Every strategy is deterministic per (sampler_seed, seed), and set k of a source only uses documents that
no other set k' of the same source uses (seed k = the k-th disjoint block of a seeded document order).
- random_window: the reference sampler (sampler.py), unchanged.
- concat_chunk: documents joined with EOS into one stream and cut into seq_len chunks (packing). Set k
  consumes whole documents until it has n_samples chunks; the tail of its last document is dropped, so
  that no document straddles two sets.
- padding: each document's first seq_len tokens, right-padded; `effective_tokens` counts the real ones.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from calib_assets.calibration.sampler import SourceTooSmallError, check_capacity, eligible_documents, sample_windows
from calib_assets.calibration.specs import ConcatChunk, Padding, RandomWindow

Segment = tuple[str, int, int]  # (doc_id, offset in the document, tokens)


@dataclass(frozen=True)
class Sample:
    token_ids: tuple[int, ...]
    segments: tuple[Segment, ...]  # the document slices the row is made of, in row order
    effective_tokens: int  # tokens that are not padding

    @property
    def doc_id(self) -> str:
        return self.segments[0][0]

    @property
    def offset(self) -> int:
        return self.segments[0][1]


def draw_samples(documents: Mapping[str, Sequence[int]], sampling, *, seq_len: int, n_samples: int, seed: int,
                 sampler_seed: int = 0, source: str = "source", pad_id: int = 0,
                 eos_id: int | None = None) -> list[Sample]:
    """Set number `seed` of the source under `sampling` (a specs.SamplingSpec)."""
    if seq_len < 1 or n_samples < 1 or seed < 0:
        raise ValueError(f"need seq_len >= 1, n_samples >= 1, seed >= 0; got {seq_len}, {n_samples}, {seed}")
    if isinstance(sampling, RandomWindow):
        windows = sample_windows(documents, seq_len=seq_len, n_samples=n_samples, seed=seed,
                                 sampler_seed=sampler_seed, source=source)
        return [Sample(w.token_ids, ((w.doc_id, w.offset, seq_len),), seq_len) for w in windows]
    if isinstance(sampling, Padding):
        return _padded(documents, sampling, seq_len, n_samples, seed, sampler_seed, source, pad_id)
    if isinstance(sampling, ConcatChunk):
        separator = [eos_id] if sampling.separator == "eos" and eos_id is not None else []
        return _packed(documents, seq_len, n_samples, seed, sampler_seed, source, separator)
    raise ValueError(f"unknown sampling {sampling!r}")


def eligible_count(lengths: Mapping[str, int], sampling, seq_len: int) -> int:
    """Documents the strategy may use (the others are rejected)."""
    return sum(length >= minimum_length(sampling, seq_len) for length in lengths.values())


def minimum_length(sampling, seq_len: int) -> int:
    if isinstance(sampling, RandomWindow):
        return seq_len
    if isinstance(sampling, Padding):
        return sampling.min_tokens
    return 1


def check_strategy_capacity(lengths: Mapping[str, int], sampling, *, source: str, seq_len: int, n_samples: int,
                            seeds: Sequence[int]) -> None:
    """Fail before any set is drawn when the source cannot give the requested disjoint sets."""
    if isinstance(sampling, ConcatChunk):
        needed = (max(seeds) + 1) * n_samples * seq_len
        total = sum(lengths.values())
        if total < needed:
            raise SourceTooSmallError(
                f"source {source!r} has {total} calibration tokens, but packing seeds {sorted(seeds)} of "
                f"{n_samples} x {seq_len} tokens needs at least {needed}; lower n_samples or seq_len, "
                "use fewer seeds, or pick a larger source")
        return
    check_capacity(eligible_count(lengths, sampling, seq_len), source=source, seq_len=minimum_length(sampling, seq_len),
                   n_samples=n_samples, seeds=seeds)


def _shuffled(documents: Mapping[str, Sequence[int]], minimum: int, sampler_seed: int) -> list[str]:
    order = eligible_documents({doc_id: len(ids) for doc_id, ids in documents.items()}, minimum)
    random.Random(sampler_seed).shuffle(order)
    return order


def _padded(documents, spec: Padding, seq_len, n_samples, seed, sampler_seed, source, pad_id) -> list[Sample]:
    order = _shuffled(documents, spec.min_tokens, sampler_seed)
    check_capacity(len(order), source=source, seq_len=spec.min_tokens, n_samples=n_samples, seeds=[seed])
    samples = []
    for doc_id in order[seed * n_samples : (seed + 1) * n_samples]:
        ids = list(documents[doc_id][:seq_len])
        samples.append(Sample(tuple(ids + [pad_id] * (seq_len - len(ids))), ((doc_id, 0, len(ids)),), len(ids)))
    return samples


def _packed(documents, seq_len, n_samples, seed, sampler_seed, source, separator: list[int]) -> list[Sample]:
    order = _shuffled(documents, 1, sampler_seed)
    position = 0
    for set_index in range(seed + 1):
        stream: list[int] = []
        placed: list[tuple[str, int, int]] = []  # (doc_id, stream start, tokens)
        while len(stream) < n_samples * seq_len:
            if position == len(order):
                raise SourceTooSmallError(
                    f"source {source!r} runs out of documents while packing set {set_index} of {n_samples} x "
                    f"{seq_len} tokens (sets are disjoint in documents); lower n_samples or seq_len, or use "
                    "fewer seeds")
            doc_id = order[position]
            position += 1
            placed.append((doc_id, len(stream), len(documents[doc_id])))
            stream.extend(documents[doc_id])
            stream.extend(separator)
    return [_chunk(stream, placed, start, seq_len) for start in range(0, n_samples * seq_len, seq_len)]


def _chunk(stream: list[int], placed: list[tuple[str, int, int]], start: int, seq_len: int) -> Sample:
    end = start + seq_len
    segments = []
    for doc_id, doc_start, length in placed:
        lo, hi = max(start, doc_start), min(end, doc_start + length)
        if lo < hi:
            segments.append((doc_id, lo - doc_start, hi - lo))
    return Sample(tuple(stream[start:end]), tuple(segments), seq_len)


def draw_selected(documents: Mapping[str, Sequence[int]], sampling, selection, *, seq_len: int, n_samples: int,
                  seed: int, sampler_seed: int = 0, source: str = "source", pad_id: int = 0,
                  eos_id: int | None = None, measure=None) -> tuple[list[Sample], dict]:
    """Sampling, then (optionally) selection of n_samples out of the seed's disjoint candidate pool of
    n_samples * pool_factor samples. `measure(selection, candidates)` returns the model measurements a
    model-based selection needs ({'perplexities': ...} or {'embeddings': ...}).

    Returns (samples, provenance) with the candidate pool size and the chosen candidate indices.
    """
    from calib_assets.calibration.selection import select

    common: dict[str, Any] = dict(seq_len=seq_len, sampler_seed=sampler_seed, source=source, pad_id=pad_id,
                                  eos_id=eos_id)
    if selection is None:
        return draw_samples(documents, sampling, n_samples=n_samples, seed=seed, **common), {}
    candidates = draw_samples(documents, sampling, n_samples=n_samples * selection.pool_factor, seed=seed, **common)
    measurements = measure(selection, candidates) if measure is not None else {}
    chosen = select(selection, [c.token_ids[: c.effective_tokens] for c in candidates], n_samples,
                    seed=sampler_seed * 1000 + seed, **measurements)
    return [candidates[i] for i in chosen], {"candidates": len(candidates), "chosen": chosen}


def pool_size(selection, n_samples: int) -> int:
    """Samples drawn per seed before selection."""
    return n_samples * (selection.pool_factor if selection is not None else 1)


def draw_mixture(components: Sequence[Mapping[str, Sequence[int]]], counts: Sequence[int], sampling, selection, *,
                 seed: int, **common) -> tuple[list[Sample], dict]:
    """counts[i] samples from component i (its k-th disjoint block, as if it were a source of its own), in
    component order. A document listed by several components belongs to the first."""
    seen: set[str] = set()
    samples: list[Sample] = []
    provenance: dict[str, Any] = {"components": []}
    for index, (documents, count) in enumerate(zip(components, counts)):
        own = {doc_id: ids for doc_id, ids in documents.items() if doc_id not in seen}
        seen |= set(own)
        drawn, chosen = draw_selected(own, sampling, selection, n_samples=count, seed=seed,
                                      **{**common, "source": f"{common.get('source', 'source')}[{index}]"})
        samples += drawn
        provenance["components"].append({"samples": count, **chosen})
    return samples, provenance
