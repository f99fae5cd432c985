"""Descriptors of a calibration set: what the data is like, so that results can be explained.

Set-level: token count, unique tokens, type-token ratio, Zipf exponent, 4-gram duplication, mean/std
perplexity under the base model, n-gram overlap with the evaluation data, counts of flagged samples.
Sample-level anomaly flags: short, boilerplate, non_english, duplicate.

Token statistics use each row's real (non-pad) tokens; text statistics use lowercase words.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FLAGS = ("short", "boilerplate", "non_english", "duplicate")
DESCRIPTORS_FILE = "descriptors.json"
TABLE = "set_descriptors"
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
ENGLISH_STOPWORDS = frozenset(
    "the of and to a in is that for it as was with be by on not he i this are or his from at which but have an "
    "they you were her she there been one all we their has would more when will if no out so said what up its "
    "about into than them can only other new some could time these two may then do first any my now such like "
    "our over also did most after".split())
BOILERPLATE_MARKERS = ("cookie", "javascript", "all rights reserved", "click here", "subscribe", "sign up",
                       "privacy policy", "terms of use", "log in", "newsletter")


@dataclass(frozen=True)
class FlagThresholds:
    short_tokens: int = 32  # fewer real tokens than this: short
    boilerplate_repeat: float = 0.3  # share of a sample's word 4-grams that repeat within it
    boilerplate_markers: int = 2  # or at least this many boilerplate phrases
    english_stopword_share: float = 0.15  # fewer stopwords among its words than this: non_english
    duplicate_containment: float = 0.5  # share of its word 4-grams found in an earlier sample: duplicate


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(items: Sequence, n: int) -> list[tuple]:
    return [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]


def zipf_exponent(tokens: Iterable[int]) -> float:
    """s of the least-squares fit log f(r) = c - s log r over the frequency ranks r (NaN below 2 types)."""
    counts = sorted(Counter(tokens).values(), reverse=True)
    if len(counts) < 2:
        return float("nan")
    ranks = np.log(np.arange(1, len(counts) + 1))
    slope = np.polyfit(ranks, np.log(np.array(counts, dtype=np.float64)), 1)[0]
    return float(-slope)


def duplication_share(grams: Sequence[tuple]) -> float:
    """Share of n-gram occurrences that repeat an earlier one: 1 - distinct / total (0 when none)."""
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def eval_overlap(texts: Sequence[str], eval_grams: set[tuple], n: int = 4) -> float:
    """Share of the set's distinct word n-grams that also occur in the evaluation text."""
    own = {gram for text in texts for gram in ngrams(words(text), n)}
    return len(own & eval_grams) / len(own) if own else 0.0


def word_ngram_set(texts: Iterable[str], n: int = 4) -> set[tuple]:
    return {gram for text in texts for gram in ngrams(words(text), n)}


def sample_flags(texts: Sequence[str], effective_tokens: Sequence[int],
                 thresholds: FlagThresholds = FlagThresholds()) -> list[list[str]]:
    """Anomaly flags of each sample, in FLAGS order."""
    flags: list[list[str]] = []
    seen: list[set[tuple]] = []
    for text, n_tokens in zip(texts, effective_tokens):
        tokens = words(text)
        grams = ngrams(tokens, 4)
        distinct = set(grams)
        found = []
        if n_tokens < thresholds.short_tokens:
            found.append("short")
        lowered = text.lower()
        markers = sum(marker in lowered for marker in BOILERPLATE_MARKERS)
        if duplication_share(grams) > thresholds.boilerplate_repeat or markers >= thresholds.boilerplate_markers:
            found.append("boilerplate")
        stopwords = sum(word in ENGLISH_STOPWORDS for word in tokens)
        if not tokens or stopwords / len(tokens) < thresholds.english_stopword_share:
            found.append("non_english")
        if distinct and any(len(distinct & earlier) / len(distinct) > thresholds.duplicate_containment
                            for earlier in seen):
            found.append("duplicate")
        seen.append(distinct)
        flags.append(found)
    return flags


def describe(rows: Sequence[Sequence[int]], texts: Sequence[str], *, effective_tokens: Sequence[int] | None = None,
             perplexities: Sequence[float] | np.ndarray | None = None, eval_grams: set[tuple] | None = None,
             thresholds: FlagThresholds = FlagThresholds()) -> dict[str, Any]:
    """{'set': descriptors, 'samples': [{index, effective_tokens, perplexity, flags}], 'thresholds': ...}."""
    effective = list(effective_tokens) if effective_tokens is not None else [len(row) for row in rows]
    real = [list(row[:n]) for row, n in zip(rows, effective)]
    tokens = [token for row in real for token in row]
    grams = [gram for row in real for gram in ngrams(row, 4)]
    flags = sample_flags(texts, effective, thresholds)
    ppl = np.asarray(perplexities, dtype=np.float64) if perplexities is not None else None
    summary = {
        "n_samples": len(rows),
        "token_count": len(tokens),
        "unique_tokens": len(set(tokens)),
        "type_token_ratio": len(set(tokens)) / len(tokens) if tokens else 0.0,
        "zipf_exponent": zipf_exponent(tokens),
        "ngram4_duplication": duplication_share(grams),
        "perplexity_mean": float(ppl.mean()) if ppl is not None and ppl.size else None,
        "perplexity_std": float(ppl.std(ddof=1)) if ppl is not None and ppl.size > 1 else None,
        "eval_ngram4_overlap": eval_overlap(texts, eval_grams) if eval_grams is not None else None,
        **{f"n_{flag}": sum(flag in found for found in flags) for flag in FLAGS},
    }
    samples = [{"index": i, "effective_tokens": int(effective[i]),
                "perplexity": float(ppl[i]) if ppl is not None else None, "flags": flags[i]}
               for i in range(len(rows))]
    return {"set": _finite_or_none(summary), "samples": samples, "thresholds": asdict(thresholds)}


def _finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in values.items()}


def inspection_markdown(texts: Sequence[str], descriptors: dict[str, Any], *, n_show: int = 5, seed: int = 0,
                        max_chars: int = 600) -> str:
    """Markdown for the UI: `n_show` random samples (seeded) with their flags and perplexity, then every
    flagged sample's index (the paper's recommendation: look at random samples for anomalies)."""
    import random

    samples = descriptors["samples"]
    shown = sorted(random.Random(seed).sample(range(len(texts)), min(n_show, len(texts))))
    parts = []
    for index in shown:
        info = samples[index]
        flags = ", ".join(info["flags"]) or "none"
        perplexity = f"{info['perplexity']:.1f}" if info.get("perplexity") is not None else "n/a"
        excerpt = texts[index][:max_chars].replace("```", "'''")
        parts.append(f"**sample {index}** - flags: {flags} - perplexity {perplexity} - "
                     f"{info['effective_tokens']} tokens\n\n```\n{excerpt}\n```")
    flagged = {flag: [s["index"] for s in samples if flag in s["flags"]] for flag in FLAGS}
    summary = "\n".join(f"- {flag}: {indices or 'none'}" for flag, indices in flagged.items())
    return "\n\n".join(parts) + "\n\n**flagged samples**\n\n" + summary
