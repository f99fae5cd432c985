"""Study specs: the one place where a study's grid is declared (studies/*.yaml), validated at load time.

A study is models x methods x calibration sources x seeds, plus evaluation datasets. Partitions:
- variant = "<model>.<method label>" for methods that use calibration data (e.g. smollm2-135m.gptq-w3g16)
- calib   = "<source>.s<seed>" (e.g. bbc-tech.s2), or "<source>.n<size>.s<seed>" when the study sweeps the
  number of calibration examples (calibration.n_samples given as a list, e.g. c4.n128.s0)
- baseline = "<model>.dense" and "<model>.<label>" for calibration-free methods, once per model.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from calib_assets.calibration.specs import (
    ConcatChunk,
    Padding,
    RandomWindow,
    is_reference,
    parse_sampling,
    parse_selection,
)
from calib_assets.calibration.strategies import pool_size
from calib_assets.compression import check_layer_compatible, make_method_config
from calib_assets.models import EmbeddedModel, ModelSpec, RandomLlama, known_context_length, parse_model_spec
from calib_assets.sources import (
    DERIVED_KINDS,
    EMBEDDED_SOURCES,
    GeneratedSource,
    MixtureSource,
    SourceSpec,
    parse_source_spec,
)

STUDY_ENV = "CALIB_ASSETS_STUDY"
DEFAULT_STUDY = "default"
STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
DENSE = "dense"
# Input widths of every linear inside a decoder layer, for models whose shapes are known without loading.
EMBEDDED_LINEAR_IN_FEATURES = {"smollm2-135m": {576, 1536}}


class StudyError(ValueError):
    """A study file that cannot be used; the message names the file and the offending value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MethodEntry(_Strict):
    """One compression method with its parameters, e.g. {method: gptq, bits: 3, group_size: 64}."""

    model_config = ConfigDict(extra="allow", frozen=True)
    method: str

    @cached_property
    def config(self):
        return make_method_config(self.method, dict(self.model_extra or {}))

    @model_validator(mode="after")
    def _validate_config(self) -> MethodEntry:
        self.config  # noqa: B018  (raises ValueError naming the bad parameter)
        return self

    @property
    def label(self) -> str:
        return self.config.label()

    @property
    def needs_calibration(self) -> bool:
        return self.config.needs_calibration


class CalibrationSpec(_Strict):
    n_samples: int | list[int] = Field(description="windows per calibration set; a list sweeps the set size")
    seq_len: int = Field(gt=0, description="tokens per window")
    seeds: list[int] = Field(min_length=1, description="seed k = the k-th disjoint set of each source")
    sampler_seed: int = 0
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    sampling: Any = Field(RandomWindow(), description="default sampling of every source (random_window, "
                                                      "concat_chunk, padding)")
    selection: Any = Field(None, description="default selection (zipcal, least_perplexity, coverage, "
                                             "activation_kmeans) or none")
    descriptors: bool = Field(True, description="compute the descriptors of every calibration set")

    @field_validator("sampling")
    @classmethod
    def _sampling(cls, value: Any) -> Any:
        return parse_sampling(value)

    @field_validator("selection")
    @classmethod
    def _selection(cls, value: Any) -> Any:
        return parse_selection(value)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
        return sorted(seeds)

    @field_validator("n_samples")
    @classmethod
    def _positive_sizes(cls, n_samples: int | list[int]) -> int | list[int]:
        sizes = n_samples if isinstance(n_samples, list) else [n_samples]
        if not sizes or any(size <= 0 for size in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError(f"n_samples must be a positive integer or a list of distinct positive integers, "
                             f"got {n_samples}")
        return sorted(n_samples) if isinstance(n_samples, list) else n_samples

    @property
    def sizes(self) -> list[int]:
        return self.n_samples if isinstance(self.n_samples, list) else [self.n_samples]

    @property
    def sweeps_size(self) -> bool:
        return len(self.sizes) > 1


class OfflineTaskEntry(_Strict):
    """A task built from the held-out text of the study's evaluation datasets (never calibration data)."""

    kind: str
    n_examples: int = Field(100, gt=0)
    seed: int = 0

    @property
    def name(self) -> str:
        return f"calib_{self.kind}"

    def builder_options(self) -> dict[str, Any]:
        """The kind's own construction parameters, passed to its builder."""
        return self.model_dump(exclude={"kind", "n_examples", "seed"})


class ClozeTaskEntry(OfflineTaskEntry):
    """LAMBADA-style: predict the last word of a held-out passage."""

    kind: Literal["cloze"]
    min_context_words: int = Field(40, gt=0)
    max_context_words: int = Field(200, gt=0, description="passages are cut to their last N words")

    @model_validator(mode="after")
    def _ordered(self) -> ClozeTaskEntry:
        if self.max_context_words < self.min_context_words:
            raise ValueError(f"max_context_words={self.max_context_words} must be >= min_context_words="
                             f"{self.min_context_words}")
        return self


class NextSentenceTaskEntry(OfflineTaskEntry):
    """HellaSwag-style: pick a passage's next sentence among distractors from other documents."""

    kind: Literal["next_sentence"]
    n_choices: int = Field(4, ge=2)
    context_sentences: int = Field(3, ge=1)


class LmEvalTaskEntry(_Strict):
    """A task of lm-eval by its name (e.g. one of the paper's ten), optionally on local data files."""

    kind: Literal["lm_eval"] = "lm_eval"
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    data_files: str | list[str] | None = None

    @field_validator("name")
    @classmethod
    def _known_to_lm_eval(cls, name: str) -> str:
        from calib_assets.evaluation.harness import check_lm_eval_task_name

        return check_lm_eval_task_name(name)


class EvaluationSpec(_Strict):
    datasets: list[str] | None = Field(None, description="sources whose held-out text is scored; default: all; "
                                                         "[]: none")
    extra_datasets: list[Any] = Field([], description="evaluation-only text sources (never calibration data), "
                                                      "scored whole, e.g. WikiText-2's test split")
    seq_len: int = Field(512, gt=1)
    max_tokens: int = Field(16384, gt=1, description="held-out tokens scored per dataset")
    batch_size: int = Field(8, gt=0)
    tasks: list[Annotated[ClozeTaskEntry | NextSentenceTaskEntry | LmEvalTaskEntry,
                          Field(discriminator="kind")]] = []
    limit: int | None = Field(None, gt=0, description="at most this many examples per task (lm-eval limit)")
    kl_tokens: int = Field(0, ge=0, description="held-out tokens of the first evaluation dataset (else the first "
                                                "extra dataset) for KL vs the dense model")

    @field_validator("extra_datasets")
    @classmethod
    def _parse_extra(cls, sources: list[Any]) -> list[Any]:
        return _parse_sources(sources, "evaluation dataset")

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, tasks: list) -> list:
        return _unique(tasks, "evaluation task", lambda task: task.name)


class ComputeSpec(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    forward_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(8, gt=0, description="calibration windows per forward pass")
    model_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the dtype the model is held in while it is compressed: each layer is compressed "
                               "from an fp32 copy and its results rounded once to this dtype; bfloat16 halves "
                               "the host memory of the model, and freed memory is then handed back between "
                               "layers")


class Study(_Strict):
    name: str
    description: str = ""
    models: list[Any] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    sources: list[Any] = Field(min_length=1)
    calibration: CalibrationSpec
    evaluation: EvaluationSpec = EvaluationSpec()
    compute: ComputeSpec = ComputeSpec()

    @field_validator("models")
    @classmethod
    def _parse_models(cls, models: list[Any]) -> list[ModelSpec]:
        return _unique([parse_model_spec(model) for model in models], "model", lambda m: m.name)

    @field_validator("sources")
    @classmethod
    def _parse_sources(cls, sources: list[Any]) -> list[Any]:
        return _parse_sources(sources, "source")

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, methods: list[MethodEntry]) -> list[MethodEntry]:
        return _unique(methods, "method", lambda m: m.label)

    @model_validator(mode="after")
    def _cross_checks(self) -> Study:
        if not self.calibrated_methods:
            raise ValueError(f"a study needs calibration data to matter: add a method that uses it "
                             f"(methods given: {[m.label for m in self.methods]})")
        unknown = set(self.evaluation.datasets or []) - set(self.source_names)
        if unknown:
            raise ValueError(f"evaluation datasets {sorted(unknown)} are not sources of this study; "
                             f"allowed: {self.source_names} (evaluation-only text goes in evaluation.extra_datasets)")
        _unique(self.sources + self.evaluation.extra_datasets, "source or evaluation dataset label", lambda s: s.label)
        check_calibration_sources(self)
        evaluation = self.evaluation
        if evaluation.max_tokens < evaluation.seq_len:
            raise ValueError(f"evaluation.max_tokens={evaluation.max_tokens} holds no window of evaluation.seq_len="
                             f"{evaluation.seq_len}; allowed: at least {evaluation.seq_len}")
        if evaluation.kl_tokens and not (self.eval_datasets or self.extra_dataset_names):
            raise ValueError(f"evaluation.kl_tokens={evaluation.kl_tokens} needs text to compare on: give "
                             "evaluation.datasets or evaluation.extra_datasets, or set kl_tokens: 0")
        if 0 < evaluation.kl_tokens < evaluation.seq_len:
            raise ValueError(f"evaluation.kl_tokens={evaluation.kl_tokens} holds no window of evaluation.seq_len="
                             f"{evaluation.seq_len}; allowed: 0 (no KL) or at least {evaluation.seq_len}")
        for model in self.models:
            context = known_context_length(model)
            if context is not None:
                self.check_context_length(model.name, context)
        for model in self.models:
            for width in sorted(known_linear_in_features(model)):
                for method in self.methods:
                    check_layer_compatible(method.config, f"{model.name} (linears of width {width})", width)
        return self

    def check_context_length(self, model_name: str, context: int) -> None:
        """ValueError unless every window (calibration and evaluation) fits the model's context."""
        for name, seq_len in [("calibration.seq_len", self.calibration.seq_len),
                              ("evaluation.seq_len", self.evaluation.seq_len)]:
            if seq_len > context:
                raise ValueError(f"{name}={seq_len} is longer than the context of model {model_name!r} "
                                 f"({context} tokens); allowed: 1..{context}")

    # -- the grid --------------------------------------------------------------------------------
    @property
    def source_names(self) -> list[str]:
        return [source.label for source in self.sources]

    @property
    def corpus_names(self) -> list[str]:
        """Every text corpus the study reads: calibration sources, then evaluation-only datasets."""
        return self.source_names + self.extra_dataset_names

    @property
    def extra_dataset_names(self) -> list[str]:
        return [source.label for source in self.evaluation.extra_datasets]

    @property
    def eval_datasets(self) -> list[str]:
        """Sources whose held-out split is scored (and from which offline tasks are built)."""
        return self.source_names if self.evaluation.datasets is None else self.evaluation.datasets

    @property
    def calibrated_methods(self) -> list[MethodEntry]:
        return [method for method in self.methods if method.needs_calibration]

    @property
    def calibration_free_methods(self) -> list[MethodEntry]:
        return [method for method in self.methods if not method.needs_calibration]

    @property
    def offline_tasks(self) -> list[OfflineTaskEntry]:
        return [task for task in self.evaluation.tasks if isinstance(task, OfflineTaskEntry)]

    @property
    def lm_eval_tasks(self) -> list[LmEvalTaskEntry]:
        return [task for task in self.evaluation.tasks if isinstance(task, LmEvalTaskEntry)]

    @cached_property
    def _calib_grid(self) -> dict[str, tuple[str, int, int]]:
        """calib key -> (source, n_samples, seed)."""
        spec = self.calibration
        return {calib_key(source, seed, size if spec.sweeps_size else None): (source, size, seed)
                for source in self.source_names for size in spec.sizes for seed in spec.seeds}

    @property
    def calib_keys(self) -> list[str]:
        return list(self._calib_grid)

    @property
    def variant_keys(self) -> list[str]:
        return [variant_key(m.name, method.label) for m in self.models for method in self.calibrated_methods]

    @property
    def baseline_keys(self) -> list[str]:
        labels = [DENSE] + [method.label for method in self.calibration_free_methods]
        return [variant_key(m.name, label) for m in self.models for label in labels]

    def sampling_for(self, label: str):
        """The source's own sampling, else the study's default."""
        return self.source(label).sampling or self.calibration.sampling

    def selection_for(self, label: str):
        """The source's own selection, else the study's default (None: no selection)."""
        return self.source(label).selection or self.calibration.selection

    def uses_reference_sampler(self, label: str) -> bool:
        """The reference random window, no selection, on a source of its own (not a mixture)."""
        return (is_reference(self.sampling_for(label), self.selection_for(label))
                and not isinstance(self.source(label), MixtureSource))

    def model(self, name: str) -> ModelSpec:
        return _lookup({m.name: m for m in self.models}, name, "model")

    def source(self, name: str):
        """A calibration source or an evaluation-only dataset by label."""
        return _lookup({s.label: s for s in self.sources + self.evaluation.extra_datasets}, name, "source")

    def method(self, label: str) -> MethodEntry | None:
        """The method behind a label; None for the dense baseline."""
        if label == DENSE:
            return None
        return _lookup({m.label: m for m in self.methods}, label, "method")

    def parse_variant(self, key: str) -> tuple[ModelSpec, MethodEntry | None]:
        model_name, _, label = key.partition(".")
        return self.model(model_name), self.method(label)

    def parse_calib(self, key: str) -> tuple[str, int]:
        """(source, seed) of a calibration partition key."""
        source, _, seed = self._calib_entry(key)
        return source, seed

    def calib_size(self, key: str) -> int:
        """The number of calibration examples in the set behind a calibration partition key."""
        return self._calib_entry(key)[1]

    def _calib_entry(self, key: str) -> tuple[str, int, int]:
        if key not in self._calib_grid:
            allowed = self.calib_keys if len(self.calib_keys) <= 30 else self.calib_keys[:30] + ["..."]
            raise StudyError(f"calibration partition {key!r} is not in study {self.name!r}; allowed: {allowed}")
        return self._calib_grid[key]


def variant_key(model: str, label: str) -> str:
    return f"{model}.{label}"


def calib_key(source: str, seed: int, n_samples: int | None = None) -> str:
    return f"{source}.s{seed}" if n_samples is None else f"{source}.n{n_samples}.s{seed}"


def check_calibration_sources(study: Study) -> None:
    """References between sources, and sizes no strategy could meet, rejected before any work starts."""
    spec = study.calibration
    plain = [s.label for s in study.sources if s.kind not in DERIVED_KINDS]
    for source in study.sources:
        sampling, selection = study.sampling_for(source.label), study.selection_for(source.label)
        if isinstance(sampling, Padding) and sampling.min_tokens > spec.seq_len:
            raise ValueError(f"source {source.label!r}: padding min_tokens={sampling.min_tokens} exceeds "
                             f"seq_len={spec.seq_len}; allowed: 1..{spec.seq_len}")
        if isinstance(source, MixtureSource):
            _check_mixture(source, plain, min(spec.sizes))  # the smallest set must reach every component
        if isinstance(source, GeneratedSource):
            _check_generated(study, source, plain, sampling, selection)


def _check_mixture(source: MixtureSource, plain: list[str], n_samples: int) -> None:
    unknown = [c.source for c in source.components if c.source not in plain]
    if unknown:
        raise ValueError(f"mixture {source.label!r} references {unknown}, which are not plain sources of the "
                         f"study; allowed: {plain}")
    counts = mixture_counts([c.weight for c in source.components], n_samples)
    empty = [c.source for c, count in zip(source.components, counts) if count == 0]
    if empty:
        raise ValueError(f"mixture {source.label!r}: components {empty} get 0 of n_samples={n_samples} samples "
                         f"with weights {[c.weight for c in source.components]}; raise their weights")


def _check_generated(study: Study, source: GeneratedSource, plain: list[str], sampling, selection) -> None:
    models = [m.name for m in study.models]
    if source.model not in models:
        raise ValueError(f"generated source {source.label!r}: model {source.model!r} is not a model of the "
                         f"study; allowed: {models}")
    if source.prefix_source is not None and source.prefix_source not in plain:
        raise ValueError(f"generated source {source.label!r}: prefix_source {source.prefix_source!r} is not a "
                         f"plain source of the study; allowed: {plain}")
    spec = study.calibration
    longest = source.max_new_tokens + (source.prefix_tokens if source.prefix_source else 1)
    if isinstance(sampling, RandomWindow) and longest < spec.seq_len:
        raise ValueError(f"generated source {source.label!r}: generations of at most {longest} tokens can never "
                         f"hold a random window of seq_len={spec.seq_len}; raise max_new_tokens or use "
                         "sampling concat_chunk or padding")
    needed = (max(spec.seeds) + 1) * pool_size(selection, max(spec.sizes))
    if not isinstance(sampling, ConcatChunk) and source.n_documents * source.keep_fraction < needed:
        raise ValueError(f"generated source {source.label!r}: n_documents={source.n_documents} (keep_fraction "
                         f"{source.keep_fraction}) cannot give {needed} documents for seeds {spec.seeds}; "
                         f"raise n_documents to at least {int(needed / source.keep_fraction / 0.7) + 1}")


def mixture_counts(weights: list[float], n_samples: int) -> list[int]:
    """Samples per component: n * weight share, rounded by largest remainders (ties: earlier component)."""
    total = sum(weights)
    exact = [n_samples * weight / total for weight in weights]
    counts = [int(value) for value in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n_samples - sum(counts)]:
        counts[i] += 1
    return counts


def known_linear_in_features(model: ModelSpec) -> set[int]:
    if isinstance(model, EmbeddedModel):
        return EMBEDDED_LINEAR_IN_FEATURES.get(model.name, set())
    if isinstance(model, RandomLlama):
        return {model.hidden_size, model.intermediate_size}
    return set()  # hub and local models are checked against their config before compression starts


def _unique(items: list, what: str, key) -> list:
    seen: set[str] = set()
    for item in items:
        name = key(item)
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}: each {what} may appear once")
        seen.add(name)
    return items


def _parse_sources(sources: list[Any], what: str) -> list[Any]:
    """Source specs (a name or a mapping each) with distinct labels."""
    return _unique([parse_source_spec(source) for source in sources], what, lambda s: s.label)


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise StudyError(f"unknown {what} {name!r}; allowed: {sorted(table)}")
    return table[name]


def study_path(name_or_path: str) -> Path:
    """A study name (studies/<name>.yaml) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise StudyError(f"study file {name_or_path!r} does not exist")
        return candidate
    path = STUDIES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
        raise StudyError(f"unknown study {name_or_path!r}; available: {available} (or give a path to a .yaml file)")
    return path


def load_study(name_or_path: str | None = None) -> Study:
    """Load and validate a study; by default the one named by $CALIB_ASSETS_STUDY (else 'default')."""
    path = study_path(name_or_path or os.environ.get(STUDY_ENV, DEFAULT_STUDY))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise StudyError(f"study file {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise StudyError(f"study file {str(path)!r} must hold a mapping, got {type(raw).__name__}")
    try:
        return Study.model_validate(raw)
    except ValidationError as error:
        problems = "\n".join(f"- {problem}" for problem in describe_errors(error, Study))
        raise StudyError(f"study file {str(path)!r} is invalid:\n{problems}") from None


def describe_errors(error: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem, in the study file's terms: where, what, and for an unknown key the allowed ones."""
    lines = []
    for item in error.errors(include_url=False):
        where = _place(item["loc"])
        if item["type"] == "extra_forbidden":
            *parents, key = item["loc"]
            allowed = _allowed_keys(root, parents)
            place = _place(parents) or "the study"
            lines.append(f"unknown key {key!r} in {place}" + (f"; allowed: {allowed}" if allowed else ""))
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {message}" if where else message)
    return lines


def _place(loc) -> str:
    """evaluation.tasks[0].lm_eval: keys joined by dots, list indexes in brackets."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _allowed_keys(model: type[BaseModel], loc: list) -> list[str]:
    """The keys of the model found at `loc` below `model`, following list indexes and union tags ([] where
    the place holds no single model, e.g. a spec parsed by its own validator)."""
    candidates = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        below = [inner for m in candidates if part in m.model_fields
                 for inner in _models_in(_PARSED_FIELDS.get(part, m.model_fields[part].annotation))]
        tagged = [m for m in candidates if "kind" in m.model_fields and m.model_fields["kind"].default == part]
        candidates = below or tagged
    return sorted(candidates[0].model_fields) if len(candidates) == 1 else []


# fields given as plain values and parsed by a validator of their own, into these specs
_PARSED_FIELDS = {"models": ModelSpec, "sources": SourceSpec, "extra_datasets": SourceSpec}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]


__all__ = ["DENSE", "EMBEDDED_SOURCES", "Study", "StudyError", "calib_key", "load_study", "variant_key"]
