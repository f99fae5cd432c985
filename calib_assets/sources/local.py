"""Reader for files on disk: .txt (a document per file), .jsonl and .parquet (a document per row)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from calib_assets.sources.specs import LOCAL_EXTENSIONS, LocalFilesSource


def iter_local(spec: LocalFilesSource) -> Iterator[tuple[str, str]]:
    """(origin, text): origin is the file path relative to the folder, plus ':row' for tabular files.

    The files are listed eagerly, so a missing path or an empty folder fails at the call.
    """
    root = Path(spec.path).expanduser()
    files = list_local_files(root, spec.pattern)
    base = root if root.is_dir() else root.parent
    return _iter_files(files, base, spec)


def list_local_files(root: Path, pattern: str | None) -> list[Path]:
    if not root.exists():
        raise ValueError(f"local source path {str(root)!r} does not exist")
    if root.is_file():
        if pattern is not None:
            raise ValueError(f"pattern {pattern!r} applies to folders only, but {str(root)!r} is a file")
        candidates = [root]
    else:
        candidates = sorted(root.glob(pattern) if pattern else root.rglob("*"))
    files = [path for path in candidates if _is_supported_file(path, root)]
    if not files:
        shown = f"{str(root)!r}" + (f" (pattern {pattern!r})" if pattern else "")
        raise ValueError(f"local source path {shown} holds no supported files; "
                         f"allowed extensions: {list(LOCAL_EXTENSIONS)}")
    return files


def _is_supported_file(path: Path, root: Path) -> bool:
    """A plain file with a supported extension, outside hidden folders (.git, .ipynb_checkpoints ...)."""
    hidden = path != root and any(part.startswith(".") for part in path.relative_to(root).parts)
    return path.is_file() and path.suffix.lower() in LOCAL_EXTENSIONS and not hidden


def _iter_files(files: list[Path], base: Path, spec: LocalFilesSource) -> Iterator[tuple[str, str]]:
    for path in files:
        relative = path.relative_to(base).as_posix()
        suffix = path.suffix.lower()
        if suffix == ".txt":
            yield relative, read_text(path, spec.encoding)
        elif suffix == ".jsonl":
            yield from _rows(relative, _jsonl_values(path, spec.text_field, spec.encoding))
        else:
            yield from _rows(relative, _parquet_values(path, spec.text_field))


def read_text(path: Path, encoding: str) -> str:
    """A file's text in the source's declared encoding; a file that is not text in it is refused by name."""
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid {encoding} text (byte {error.start}: {error.reason}); "
                         "give the source its files' `encoding`, or remove the file") from None
    if "\x00" in text:
        raise ValueError(f"{str(path)!r} holds NUL characters: a binary file, not text; remove it from the source")
    return text


def _rows(relative: str, values: Iterator[str | None]) -> Iterator[tuple[str, str]]:
    for index, value in enumerate(values):
        if value is not None:
            yield f"{relative}:{index}", value


def _jsonl_values(path: Path, text_field: str, encoding: str) -> Iterator[str | None]:
    for line_number, line in enumerate(read_text(path, encoding).split("\n"), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or text_field not in record:
            keys = list(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(
                f"{str(path)!r} line {line_number} has no text_field {text_field!r}; available fields: {keys}"
            )
        yield _as_text(record[text_field], path, line_number)


def _parquet_values(path: Path, text_field: str) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise ValueError(f"{str(path)!r} has no column text_field {text_field!r}; available columns: {columns}")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield _as_text(value, path, None)


def _as_text(value: object, path: Path, line_number: int | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    where = f" line {line_number}" if line_number else ""
    raise ValueError(f"{str(path)!r}{where}: text field holds {type(value).__name__}, not text")
