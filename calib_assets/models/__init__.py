"""Base models: embedded (offline), hub id, local folder, or a tiny random Llama for tests."""

from calib_assets.models.loading import (
    ModelNotAvailableError,
    byte_level_tokenizer,
    cache_folder_name,
    context_length,
    load_model,
    prepare_model_folder,
    trust_remote_code,
    weights_fingerprint,
)
from calib_assets.models.specs import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    HubModel,
    LocalModel,
    ModelSpec,
    RandomLlama,
    known_context_length,
    parse_model_spec,
)

__all__ = [
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "HubModel",
    "LocalModel",
    "ModelNotAvailableError",
    "ModelSpec",
    "RandomLlama",
    "byte_level_tokenizer",
    "cache_folder_name",
    "context_length",
    "known_context_length",
    "load_model",
    "parse_model_spec",
    "prepare_model_folder",
    "trust_remote_code",
    "weights_fingerprint",
]
