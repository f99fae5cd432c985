"""Text sources -> normalised documents with stable ids (plain Python; no Dagster)."""

from calib_assets.sources.corpus import (
    COLUMNS,
    build_corpus,
    corpus_from_texts,
    corpus_fingerprint,
    corpus_summary,
    iter_texts,
    load_corpus,
    read_corpus_manifest,
    save_corpus,
)
from calib_assets.sources.normalize import CALIBRATION, HELDOUT, document_id, normalize_text, split_of
from calib_assets.sources.specs import (
    EMBEDDED_SOURCES,
    HUGGINGFACE_PRESETS,
    LOCAL_EXTENSIONS,
    DERIVED_KINDS,
    EmbeddedSource,
    GeneratedSource,
    HuggingFaceSource,
    LocalFilesSource,
    MixtureSource,
    SourceSpec,
    expand_preset,
    parse_source_spec,
)
from calib_assets.sources.wikitext import strip_wiki_markup

__all__ = [
    "CALIBRATION",
    "COLUMNS",
    "EMBEDDED_SOURCES",
    "HELDOUT",
    "HUGGINGFACE_PRESETS",
    "LOCAL_EXTENSIONS",
    "EmbeddedSource",
    "HuggingFaceSource",
    "LocalFilesSource",
    "SourceSpec",
    "build_corpus",
    "corpus_from_texts",
    "DERIVED_KINDS",
    "GeneratedSource",
    "MixtureSource",
    "expand_preset",
    "corpus_fingerprint",
    "corpus_summary",
    "document_id",
    "iter_texts",
    "load_corpus",
    "normalize_text",
    "parse_source_spec",
    "read_corpus_manifest",
    "save_corpus",
    "split_of",
    "strip_wiki_markup",
]
