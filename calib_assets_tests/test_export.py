"""export_model_folder (format hf): the exported folder loads with plain transformers and computes what the base model
with the checkpoint applied computes; bad arguments are refused before anything is written."""

import json

import pytest
import torch

from calib_assets.compression import compress_model, make_method_config, save_checkpoint
from calib_assets.compression.checkpoint import apply_checkpoint
from calib_assets.compression.export import export_model_folder
from calib_assets.models import load_model, weights_fingerprint

IDS = torch.randint(0, 257, (4, 16), generator=torch.Generator().manual_seed(3))


def _checkpoint(folder, method, params, path):
    model, _ = load_model(folder)
    compressed = compress_model(model, IDS, make_method_config(method, params), batch_size=2)
    save_checkpoint(path, compressed, {"base_fingerprint": weights_fingerprint(folder)})
    return path


@pytest.fixture
def awq_checkpoint(tiny_model_folder, tmp_path_factory):  # linears and folded norms (extra tensors)
    return _checkpoint(tiny_model_folder, "awq", {"bits": 4, "group_size": 32},
                       tmp_path_factory.mktemp("ckpt") / "awq")


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_exported_folder_gives_the_logits_of_the_applied_checkpoint(tiny_model_folder, awq_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = export_model_folder(awq_checkpoint, tiny_model_folder, tmp_path / "hf")
    assert export["dtype"] == "float32" and sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    applied, _ = load_model(tiny_model_folder)
    manifest = apply_checkpoint(applied, awq_checkpoint)
    assert torch.equal(_logits(exported), _logits(applied))
    base, _ = load_model(tiny_model_folder)
    assert not torch.allclose(_logits(exported), _logits(base))  # the compression is really in there
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.decode(tokenizer("any text")["input_ids"]) == "any text"
    written = json.loads((tmp_path / "hf" / "compression.json").read_text())
    assert written["checkpoint_fingerprint"] == manifest["fingerprint"]


def test_export_in_another_dtype_and_pruned(tiny_model_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    checkpoint = _checkpoint(tiny_model_folder, "wanda", {"n": 2, "m": 4}, tmp_path / "wanda")
    export_model_folder(checkpoint, tiny_model_folder, tmp_path / "hf", dtype="bfloat16")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto")
    applied, _ = load_model(tiny_model_folder)
    apply_checkpoint(applied, checkpoint)
    expected = applied.to(torch.bfloat16).state_dict()
    for key, tensor in exported.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected[key]), key
    down = exported.model.layers[0].mlp.down_proj.weight
    assert float((down == 0).float().mean()) == pytest.approx(0.5)  # 2:4


def test_bad_arguments_are_refused_before_writing(tiny_model_folder, awq_checkpoint, tmp_path):
    out = tmp_path / "hf"
    with pytest.raises(ValueError, match=r"dtype='int8'.*float32"):
        export_model_folder(awq_checkpoint, tiny_model_folder, out, dtype="int8")
    with pytest.raises(FileNotFoundError, match="not a compressed checkpoint"):
        export_model_folder(tmp_path, tiny_model_folder, out)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_model_folder(awq_checkpoint, tmp_path, out)
    assert not out.exists()
    out.mkdir()  # an empty folder is as good as a new one
    export_model_folder(awq_checkpoint, tiny_model_folder, out)
    with pytest.raises(ValueError, match="earlier export; pass overwrite=True"):
        export_model_folder(awq_checkpoint, tiny_model_folder, out)
    export_model_folder(awq_checkpoint, tiny_model_folder, out, overwrite=True)


def test_a_checkpoint_of_another_base_model_is_refused(tiny_model_folder, tmp_path):
    from calib_assets.models import RandomLlama, prepare_model_folder

    other = prepare_model_folder(RandomLlama(name="other", seed=1), tmp_path / "models")
    checkpoint = _checkpoint(other, "rtn", {"bits": 4, "group_size": 32}, tmp_path / "rtn")
    with pytest.raises(ValueError, match="another base model"):
        export_model_folder(checkpoint, tiny_model_folder, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
