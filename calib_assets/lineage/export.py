"""The exact calibration data of one set written out: text JSONL (doc id, offset, text per window), token
ids (npy and JSONL) and a manifest with the set's lineage and the exported files' hashes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from calib_assets.artifacts import UnsafeOutput, check_output_folder, sha256_files, write_json
from calib_assets.calibration import load_calibration_set
from calib_assets.lineage.trace import LineageError, _allowed, trace
from calib_assets.naming import partition_key
from calib_assets.steps import MANIFEST, calibration_dir
from calib_assets.study import Study

EXPORT_FILES = ("samples.jsonl", "token_ids.npy", "token_ids.jsonl", "manifest.json")


def export_calibration(study: Study, root: Path, model: str, calib: str, out: Path, *,
                       force: bool = False) -> dict[str, Any]:
    """Write the exact calibration data of one set to `out`: text JSONL (doc id, offset, text per window),
    token ids (npy and JSONL) and a manifest with the set's lineage and the exported files' hashes.
    Files of the same names are replaced only with force; other files in `out` are left alone."""
    _check_member(model, [spec.name for spec in study.models], "model", study)
    _check_member(calib, study.calib_keys, "calibration partition", study)
    out = Path(out)
    directory = calibration_dir(Path(root), model, calib)
    if not (directory / MANIFEST).is_file():
        raise LineageError(f"calibration_set [{partition_key(model=model, calib=calib)}] is not materialized yet "
                           f"(no manifest under {directory}); materialize it first")
    out = _check_out(out, force, Path(root))
    calibration = load_calibration_set(directory)  # checks the tokens against the manifest's fingerprint
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as error:
        raise LineageError(f"--out {str(out)!r} cannot be written: {error.strerror}") from error
    tmp.chmod(0o755)
    try:
        with open(tmp / "samples.jsonl", "w") as handle:
            for index, (doc_id, offset, text) in enumerate(zip(calibration.doc_ids, calibration.offsets,
                                                               calibration.texts)):
                handle.write(json.dumps({"index": index, "doc_id": doc_id, "offset": offset, "text": text}) + "\n")
        np.save(tmp / "token_ids.npy", calibration.token_ids)
        with open(tmp / "token_ids.jsonl", "w") as handle:
            for row in calibration.token_ids.tolist():
                handle.write(json.dumps(row) + "\n")
        chain = trace(study, root, partition_key(model=model, calib=calib))
        manifest = {"calibration_set": calibration.manifest,
                    "lineage": [{"asset": n.asset, "partition": n.partition, "fingerprint": n.fingerprint}
                                for n in chain],
                    "files": {name: sha256_files([tmp / name]) for name in EXPORT_FILES[:3]}}
        write_json(tmp / "manifest.json", manifest)
        _move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _check_member(value: str, allowed: list[str], what: str, study: Study) -> None:
    if value not in allowed:
        raise LineageError(f"unknown {what} {value!r} in study {study.name!r}; allowed: {_allowed(allowed)}")


def _check_out(out: Path, force: bool, root: Path) -> Path:
    """The resolved `out`; this export writes its own files into it and leaves any other file alone."""
    try:
        out = check_output_folder(out, protected=[root])
    except UnsafeOutput as error:
        raise LineageError(str(error)) from None
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LineageError(f"--out {str(out)!r} is not empty; choose an empty or new directory, or pass --force "
                           f"to replace {', '.join(EXPORT_FILES)} in it (other files are left alone)")
    return out


def _move_into(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    for name in EXPORT_FILES:
        os.replace(tmp / name, out / name)
