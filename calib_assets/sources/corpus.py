"""Source spec -> normalised, de-duplicated documents with stable ids and a deterministic split."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from calib_assets.artifacts import atomic_dir, check_contents, read_json, sha256_bytes, write_json
from calib_assets.sources.embedded import iter_embedded
from calib_assets.sources.huggingface import iter_huggingface
from calib_assets.sources.local import iter_local
from calib_assets.sources.normalize import CALIBRATION, HELDOUT, document_id, normalize_text, split_of
from calib_assets.sources.specs import (
    EmbeddedSource,
    HuggingFaceSource,
    LocalFilesSource,
    SourceSpec,
    TaskSource,
    parse_source_spec,
)

COLUMNS = ["doc_id", "text", "origin", "split", "n_chars"]
SPLITS = (CALIBRATION, HELDOUT)
CORPUS_FILE = "corpus.parquet"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


def iter_texts(spec: SourceSpec | str | dict) -> Iterator[tuple[str, str]]:
    """(origin, raw text) pairs of a source, in the source's own order. Fails early on a bad source."""
    spec = parse_source_spec(spec)
    if isinstance(spec, EmbeddedSource):
        return iter_embedded(spec.name)
    if isinstance(spec, HuggingFaceSource):
        return iter_huggingface(spec)
    if isinstance(spec, LocalFilesSource):
        return iter_local(spec)
    if isinstance(spec, TaskSource):
        from calib_assets.sources.tasks import iter_task

        return iter_task(spec)
    raise ValueError(f"source {spec.label!r} of kind {spec.kind!r} is built within a study from other sources "
                     "or the model (steps.materialize_corpus), not read on its own")


def build_corpus(spec: SourceSpec | str | dict, *, heldout_fraction: float = 0.2, min_chars: int = 200) -> pd.DataFrame:
    """Normalised documents of at least `min_chars` characters, one row per distinct text, sorted by doc_id.

    Columns: doc_id, text, origin (first place the text was seen), split ('calibration'|'heldout'), n_chars.
    """
    spec = parse_source_spec(spec)
    _check_heldout_fraction(heldout_fraction)
    return corpus_from_texts(spec.label, iter_texts(spec), heldout_fraction=heldout_fraction, min_chars=min_chars)


def corpus_from_texts(label: str, texts: Iterable[tuple[str, str]], *, heldout_fraction: float = 0.2,
                      min_chars: int = 200) -> pd.DataFrame:
    """The corpus frame of (origin, raw text) pairs: normalised, de-duplicated, split by document id."""
    _check_heldout_fraction(heldout_fraction)
    _check_min_chars(min_chars)
    documents: dict[str, tuple[str, str]] = {}
    for origin, raw in texts:
        text = normalize_text(raw)
        if len(text) >= min_chars:
            documents.setdefault(document_id(text), (text, origin))
    if not documents:
        raise ValueError(f"source {label!r} has no document of at least min_chars={min_chars} characters")
    return _frame(documents, heldout_fraction)


def _frame(documents: dict[str, tuple[str, str]], heldout_fraction: float) -> pd.DataFrame:
    ids = sorted(documents)
    texts = [documents[doc_id][0] for doc_id in ids]
    return pd.DataFrame(
        {
            "doc_id": ids,
            "text": texts,
            "origin": [documents[doc_id][1] for doc_id in ids],
            "split": [split_of(doc_id, heldout_fraction) for doc_id in ids],
            "n_chars": pd.array([len(text) for text in texts], dtype="int64"),
        },
        columns=COLUMNS,
    )


def _check_heldout_fraction(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"heldout_fraction {value!r} must be a number in (0, 1] (1: evaluation-only text)")


def _check_min_chars(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"min_chars {value!r} must be an integer >= 1")


def corpus_fingerprint(df: pd.DataFrame) -> str:
    """sha256 over (doc_id, split, text) of every row, in row order."""
    _check_columns(df)

    def chunks() -> Iterator[bytes]:
        for doc_id, split, text in zip(df["doc_id"], df["split"], df["text"]):
            encoded = text.encode("utf-8")
            # The length prefix keeps the byte stream unambiguous whatever the texts hold.
            yield f"{doc_id}\t{split}\t{len(encoded)}\n".encode() + encoded

    return sha256_bytes(chunks())


def corpus_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Documents, characters and words (whitespace-separated), in total and per split."""
    _check_columns(df)
    words = df["text"].str.split().str.len()
    per_split = {
        split: {
            "documents": int((df["split"] == split).sum()),
            "characters": int(df.loc[df["split"] == split, "n_chars"].sum()),
            "words": int(words[df["split"] == split].sum()),
        }
        for split in SPLITS
    }
    return {
        "documents": int(len(df)),
        "characters": int(df["n_chars"].sum()),
        "words": int(words.sum()),
        "splits": per_split,
    }


def _check_columns(df: pd.DataFrame) -> None:
    missing = [column for column in COLUMNS if column not in df.columns]
    if missing:
        raise ValueError(f"corpus frame lacks columns {missing}; a corpus needs {COLUMNS}")


def save_corpus(df: pd.DataFrame, directory: Path | str, *, metadata: dict[str, Any] | None = None,
                **provenance: Any) -> dict[str, Any]:
    """Write corpus.parquet + manifest.json (fingerprint, summary, metadata, provenance) atomically; return
    the manifest."""
    _check_columns(df)
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": corpus_fingerprint(df),
        "summary": corpus_summary(df),
        "metadata": metadata or {},
        **provenance,
    }
    with atomic_dir(Path(directory)) as tmp:
        df[COLUMNS].to_parquet(tmp / CORPUS_FILE, index=False)
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def read_corpus_manifest(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        raise ValueError(f"{str(directory)!r} is not a saved corpus: {MANIFEST_FILE} is missing")
    return read_json(path)


def load_corpus(directory: Path | str) -> pd.DataFrame:
    """Read a saved corpus, checked against its seal and its manifest's fingerprint."""
    manifest = read_corpus_manifest(directory)
    check_contents(Path(directory), f"text corpus at {str(directory)!r}", rebuild_hint="re-materialize its text_corpus")
    df = pd.read_parquet(Path(directory) / CORPUS_FILE)
    if corpus_fingerprint(df) != manifest["fingerprint"]:
        raise ValueError(f"corpus in {str(directory)!r} does not match its manifest fingerprint; rebuild it")
    return df
