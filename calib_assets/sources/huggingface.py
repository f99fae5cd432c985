"""Reader for `datasets.load_dataset` sources (Hub datasets, or json/parquet builders on local files)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from calib_assets.sources.specs import HuggingFaceSource


def iter_huggingface(spec: HuggingFaceSource) -> Iterator[tuple[str, str]]:
    """(f"{split}:{row_index}", text) for the first `max_documents` rows of the split.

    The dataset is opened eagerly, so a wrong path, split or text_field fails at the call.
    """
    dataset = _load(spec)
    rows = iter(dataset)
    first = next(rows, None)
    if first is None:
        return iter(())
    _check_text_field(spec, first.keys())
    all_rows = _chain_first(first, rows)
    return islice(_texts(spec, all_rows), spec.max_documents)


def _load(spec: HuggingFaceSource) -> Any:
    import datasets  # heavy: imported only when a Hugging Face source is read

    try:
        return datasets.load_dataset(
            spec.path,
            spec.name,
            split=spec.split,
            data_files=spec.data_files,
            revision=spec.revision,
            streaming=spec.streaming,
        )
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(
            f"cannot load Hugging Face source {spec.label!r} (path={spec.path!r}, name={spec.name!r}, "
            f"split={spec.split!r}, data_files={spec.data_files!r}): {error}"
        ) from error


def _check_text_field(spec: HuggingFaceSource, columns: Iterable[str]) -> None:
    columns = list(columns)
    if spec.text_field not in columns:
        raise ValueError(
            f"text_field {spec.text_field!r} is not a column of Hugging Face source {spec.label!r} "
            f"(path={spec.path!r}); available columns: {columns}"
        )


def _chain_first(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def _texts(spec: HuggingFaceSource, rows: Iterator[dict]) -> Iterator[tuple[str, str]]:
    for index, row in enumerate(rows):
        value = row[spec.text_field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(
                f"text_field {spec.text_field!r} of {spec.label!r} row {index} holds "
                f"{type(value).__name__}, not text"
            )
        yield f"{spec.split}:{index}", value
