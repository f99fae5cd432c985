"""Calibration sets: token ids, their text and provenance, saved with a manifest."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib_assets.artifacts import CorruptArtifact, atomic_dir, check_contents, read_json, sha256_bytes, write_json
from calib_assets.calibration.sampler import Window, sample_windows
from calib_assets.calibration.strategies import Sample

TOKENS_FILE = "tokens.npy"
SAMPLES_FILE = "samples.jsonl"
MANIFEST_FILE = "manifest.json"
POOL_FILE = "pool.npz"
FINGERPRINT_COVERS = ["token_ids", "doc_id", "offset", "text", "segments", "effective_tokens"]


@dataclass
class CalibrationSet:
    token_ids: np.ndarray  # int64 [n_samples, seq_len]
    doc_ids: list[str]
    offsets: list[int]
    texts: list[str]
    manifest: dict[str, Any] = field(default_factory=dict)
    # Only for sets that are not one plain window per document (packing, padding): the document slices
    # (doc_id, offset, tokens) of each row, and each row's non-pad token count.
    segments: list[list[list]] | None = None
    effective_tokens: list[int] | None = None

    @property
    def documents(self) -> list[str]:
        """Every document the set draws on, in first-use order."""
        if self.segments is None:
            return list(self.doc_ids)
        return list(dict.fromkeys(segment[0] for row in self.segments for segment in row))

    @property
    def row_lengths(self) -> list[int]:
        return self.effective_tokens or [int(self.token_ids.shape[1])] * int(self.token_ids.shape[0])

    @property
    def fingerprint(self) -> str:
        """sha256 over everything exported as the set: token ids, and each row's document, offset and text
        (and, for packed or padded sets, its segments and real-token count)."""
        rows = [{"doc_id": d, "offset": o, "text": t} for d, o, t in zip(self.doc_ids, self.offsets, self.texts)]
        if self.segments is not None:
            assert self.effective_tokens is not None  # set together with segments
            for row, segments, effective in zip(rows, self.segments, self.effective_tokens):
                row.update(segments=segments, effective_tokens=effective)
        return sha256_bytes([token_fingerprint(self.token_ids).encode(), json.dumps(rows, sort_keys=True).encode()])

    @property
    def token_fingerprint(self) -> str:
        return token_fingerprint(self.token_ids)

    def input_ids(self):
        import torch

        return torch.from_numpy(self.token_ids)


def token_fingerprint(token_ids: np.ndarray) -> str:
    array = np.ascontiguousarray(token_ids, dtype="<i8")
    return sha256_bytes([repr(array.shape).encode(), array.tobytes()])


def tokenize_documents(texts: Mapping[str, str], tokenizer) -> dict[str, list[int]]:
    """Token ids of each document, without special tokens (a window is a plain slice of its document)."""
    doc_ids = list(texts)
    encoded = tokenizer([texts[doc_id] for doc_id in doc_ids], add_special_tokens=False)["input_ids"]
    return dict(zip(doc_ids, encoded))


def save_token_pool(documents: Mapping[str, list[int]], directory: Path, **provenance: Any) -> dict[str, Any]:
    """A source's tokenized calibration documents (doc id -> token ids), with a manifest."""
    doc_ids = sorted(documents)
    lengths = np.array([len(documents[doc_id]) for doc_id in doc_ids], dtype=np.int64)
    flat = np.array([token for doc_id in doc_ids for token in documents[doc_id]], dtype=np.int64)
    fingerprint = sha256_bytes([json.dumps(doc_ids).encode(), lengths.tobytes(), flat.tobytes()])
    manifest = {**provenance, "fingerprint": fingerprint, "documents": len(doc_ids), "tokens": int(flat.size),
                "token_lengths": dict(zip(doc_ids, lengths.tolist()))}
    with atomic_dir(Path(directory)) as tmp:
        np.savez(tmp / POOL_FILE, lengths=lengths, tokens=flat)
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def load_token_pool(directory: Path) -> dict[str, list[int]]:
    manifest = read_json(Path(directory) / MANIFEST_FILE)
    with np.load(Path(directory) / POOL_FILE) as arrays:
        lengths, flat = arrays["lengths"], arrays["tokens"]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    doc_ids = sorted(manifest["token_lengths"])
    return {doc_id: flat[bounds[i] : bounds[i + 1]].tolist() for i, doc_id in enumerate(doc_ids)}


def build_calibration_set(
    documents: Mapping[str, list[int]], tokenizer, *, source: str, seq_len: int, n_samples: int, seed: int,
    sampler_seed: int = 0,
) -> CalibrationSet:
    windows: list[Window] = sample_windows(
        documents, seq_len=seq_len, n_samples=n_samples, seed=seed, sampler_seed=sampler_seed, source=source
    )
    token_ids = np.array([window.token_ids for window in windows], dtype=np.int64)
    return CalibrationSet(
        token_ids=token_ids,
        doc_ids=[window.doc_id for window in windows],
        offsets=[window.offset for window in windows],
        texts=tokenizer.batch_decode(token_ids.tolist()),
        manifest={"source": source, "seq_len": seq_len, "n_samples": n_samples, "seed": seed,
                  "sampler_seed": sampler_seed},
    )


def calibration_set_from_samples(samples: list[Sample], tokenizer, manifest: dict[str, Any]) -> CalibrationSet:
    """A set built by a strategy: texts decode each row's real tokens only (never the padding)."""
    return CalibrationSet(
        token_ids=np.array([sample.token_ids for sample in samples], dtype=np.int64),
        doc_ids=[sample.doc_id for sample in samples],
        offsets=[sample.offset for sample in samples],
        texts=tokenizer.batch_decode([list(s.token_ids[: s.effective_tokens]) for s in samples]),
        manifest=manifest,
        segments=[[list(segment) for segment in sample.segments] for sample in samples],
        effective_tokens=[sample.effective_tokens for sample in samples],
    )


def save_calibration_set(calibration_set: CalibrationSet, directory: Path, *, extra_files: dict[str, Any] | None = None,
                         **provenance: Any) -> dict[str, Any]:
    """Write tokens, text JSONL, manifest (and `extra_files`, name -> JSON) atomically; return the manifest."""
    manifest = {**calibration_set.manifest, **provenance, "fingerprint": calibration_set.fingerprint,
                "fingerprint_covers": FINGERPRINT_COVERS, "token_fingerprint": calibration_set.token_fingerprint,
                "shape": list(calibration_set.token_ids.shape), "doc_ids": calibration_set.documents}
    with atomic_dir(Path(directory)) as tmp:
        np.save(tmp / TOKENS_FILE, calibration_set.token_ids)
        with open(tmp / SAMPLES_FILE, "w") as handle:
            for index, (doc_id, offset, text) in enumerate(
                    zip(calibration_set.doc_ids, calibration_set.offsets, calibration_set.texts)):
                row = {"doc_id": doc_id, "offset": offset, "text": text}
                if calibration_set.segments is not None:
                    assert calibration_set.effective_tokens is not None  # set together with segments
                    row.update(segments=calibration_set.segments[index],
                               effective_tokens=calibration_set.effective_tokens[index])
                handle.write(json.dumps(row) + "\n")
        for name, content in (extra_files or {}).items():
            write_json(tmp / name, content)
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def load_calibration_set(directory: Path) -> CalibrationSet:
    """Read a saved set, checked against its seal (every file as written) and its manifest's fingerprint."""
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"no calibration set at {str(directory)!r} (materialize calibration_set first)")
    check_contents(directory, f"calibration set at {str(directory)!r}",
                   rebuild_hint="re-materialize its calibration_set partition")
    rows = [json.loads(line) for line in (directory / SAMPLES_FILE).read_text().splitlines()]
    calibration_set = CalibrationSet(
        token_ids=np.load(directory / TOKENS_FILE),
        doc_ids=[row["doc_id"] for row in rows],
        offsets=[row["offset"] for row in rows],
        texts=[row["text"] for row in rows],
        manifest=read_json(directory / MANIFEST_FILE),
        segments=[row["segments"] for row in rows] if rows and "segments" in rows[0] else None,
        effective_tokens=[row["effective_tokens"] for row in rows] if rows and "segments" in rows[0] else None,
    )
    manifest = calibration_set.manifest
    # sets saved before the fingerprint covered their text: their fingerprint is that of the token ids
    found = calibration_set.fingerprint if "fingerprint_covers" in manifest else calibration_set.token_fingerprint
    if found != manifest["fingerprint"]:
        raise CorruptArtifact(f"calibration set at {str(directory)!r} does not match its manifest fingerprint "
                              f"(over {', '.join(manifest.get('fingerprint_covers', ['token ids']))}): "
                              "re-materialize its calibration_set partition")
    return calibration_set
