"""Calibration sets: token ids, their text and provenance, saved with a manifest."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib_assets.artifacts import atomic_dir, read_json, sha256_bytes, write_json
from calib_assets.calibration.sampler import Window, sample_windows

TOKENS_FILE = "tokens.npy"
SAMPLES_FILE = "samples.jsonl"
MANIFEST_FILE = "manifest.json"
POOL_FILE = "pool.npz"


@dataclass
class CalibrationSet:
    token_ids: np.ndarray  # int64 [n_samples, seq_len]
    doc_ids: list[str]
    offsets: list[int]
    texts: list[str]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
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


def save_calibration_set(calibration_set: CalibrationSet, directory: Path, **provenance: Any) -> dict[str, Any]:
    """Write tokens, text JSONL and manifest atomically; return the manifest."""
    manifest = {**calibration_set.manifest, **provenance, "fingerprint": calibration_set.fingerprint,
                "shape": list(calibration_set.token_ids.shape), "doc_ids": calibration_set.doc_ids}
    with atomic_dir(Path(directory)) as tmp:
        np.save(tmp / TOKENS_FILE, calibration_set.token_ids)
        with open(tmp / SAMPLES_FILE, "w") as handle:
            for doc_id, offset, text in zip(calibration_set.doc_ids, calibration_set.offsets, calibration_set.texts):
                handle.write(json.dumps({"doc_id": doc_id, "offset": offset, "text": text}) + "\n")
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def load_calibration_set(directory: Path) -> CalibrationSet:
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"no calibration set at {str(directory)!r} (materialize calibration_set first)")
    rows = [json.loads(line) for line in (directory / SAMPLES_FILE).read_text().splitlines()]
    calibration_set = CalibrationSet(
        token_ids=np.load(directory / TOKENS_FILE),
        doc_ids=[row["doc_id"] for row in rows],
        offsets=[row["offset"] for row in rows],
        texts=[row["text"] for row in rows],
        manifest=read_json(directory / MANIFEST_FILE),
    )
    if calibration_set.fingerprint != calibration_set.manifest["fingerprint"]:
        raise ValueError(f"calibration set at {str(directory)!r} does not match its manifest fingerprint")
    return calibration_set
