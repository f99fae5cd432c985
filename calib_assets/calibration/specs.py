"""Typed specs of how a calibration set is drawn (sampling) and chosen (selection), validated at load time.

A study declares them per source entry (`sampling:`, `selection:`) with a study-wide default in
`calibration:`. Unknown kinds or fields are rejected with the allowed values.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

RANDOM_WINDOW = "random_window"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- sampling: how token windows are cut from documents --------------------------------------------
class RandomWindow(_Spec):
    """The reference sampler: one random seq_len window per document; shorter documents are rejected."""

    kind: Literal["random_window"] = "random_window"


class ConcatChunk(_Spec):
    """Packing: documents (seeded order) joined with EOS and cut into seq_len chunks; no document is rejected."""

    kind: Literal["concat_chunk"] = "concat_chunk"
    separator: Literal["eos", "none"] = "eos"


class Padding(_Spec):
    """One sample per document: its first seq_len tokens, right-padded with the pad (or EOS) token.

    The effective token length (non-pad tokens) is recorded per sample; documents shorter than
    `min_tokens` are rejected.
    """

    kind: Literal["padding"] = "padding"
    min_tokens: int = Field(16, gt=0)


SamplingSpec = Annotated[RandomWindow | ConcatChunk | Padding, Field(discriminator="kind")]
SAMPLING_KINDS = ("random_window", "concat_chunk", "padding")


# -- selection: which candidates of a larger pool become the set ----------------------------------------
class _Selection(_Spec):
    pool_factor: int = Field(4, ge=2, le=64, description="candidates per selected sample (seed k draws the "
                                                           "k-th disjoint candidate pool)")


class ZipCal(_Selection):
    """Model-free lexical diversity (ZipCal): score = sum of 1/pool frequency of a candidate's distinct tokens."""

    kind: Literal["zipcal"] = "zipcal"


class LeastPerplexity(_Selection):
    """The candidates the base model finds least perplexing."""

    kind: Literal["least_perplexity"] = "least_perplexity"


class TokenCoverage(_Selection):
    """Greedy: each pick adds the most token types not yet covered by the set."""

    kind: Literal["coverage"] = "coverage"


class ActivationKMeans(_Selection):
    """COLA-style activation diversity: k-means (k = n_samples) on mean-pooled hidden states of one layer,
    the candidate nearest each centroid."""

    kind: Literal["activation_kmeans"] = "activation_kmeans"
    layer: int = Field(-1, description="hidden-state index (0 = embeddings, -1 = last layer)")
    iterations: int = Field(25, gt=0, le=1000)


SelectionSpec = Annotated[ZipCal | LeastPerplexity | TokenCoverage | ActivationKMeans,
                          Field(discriminator="kind")]
SELECTION_KINDS = ("zipcal", "least_perplexity", "coverage", "activation_kmeans")
MODEL_SELECTIONS = ("least_perplexity", "activation_kmeans")

_SAMPLING = TypeAdapter(SamplingSpec)
_SELECTION = TypeAdapter(SelectionSpec)


def parse_sampling(obj: Any):
    """A kind name or a mapping with `kind` (one of SAMPLING_KINDS)."""
    return _parse(obj, _SAMPLING, SAMPLING_KINDS, "sampling")


def parse_selection(obj: Any):
    """None (no selection), a kind name or a mapping with `kind` (one of SELECTION_KINDS)."""
    return None if obj is None else _parse(obj, _SELECTION, SELECTION_KINDS, "selection")


def _parse(obj: Any, adapter: TypeAdapter, kinds: tuple[str, ...], what: str):
    if isinstance(obj, BaseModel):
        return obj
    if isinstance(obj, str):
        obj = {"kind": obj}
    if not isinstance(obj, dict) or obj.get("kind") not in kinds:
        shown = obj.get("kind") if isinstance(obj, dict) else obj
        raise ValueError(f"unknown {what} kind {shown!r}; allowed: {list(kinds)}")
    return adapter.validate_python(obj)


def is_reference(sampling, selection) -> bool:
    """The reference random-window sampler with no selection (the byte-identical default)."""
    return sampling.kind == RANDOM_WINDOW and selection is None
