"""Artifact storage: one root directory, deterministic paths, atomic writes, content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT_ENV = "CALIB_ASSETS_ROOT"
DEFAULT_ROOT = "artifacts"


def artifact_root() -> Path:
    """The directory holding every artifact (env CALIB_ASSETS_ROOT, default ./artifacts)."""
    return Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT)).resolve()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` in one rename.

    A killed or failed write leaves `final` as it was (old content or absent), never half written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_bytes(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path], chunk_size: int = 1 << 20) -> str:
    """Hash the contents of files in the given order (names are not part of the hash)."""

    def chunks() -> Iterator[bytes]:
        for path in paths:
            with open(path, "rb") as handle:
                while block := handle.read(chunk_size):
                    yield block

    return sha256_bytes(chunks())


def sha256_json(obj: Any) -> str:
    return sha256_bytes([json.dumps(obj, sort_keys=True, default=str).encode()])


def short(fingerprint: str, n: int = 12) -> str:
    return fingerprint[:n]
