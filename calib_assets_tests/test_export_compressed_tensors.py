"""export_model_folder(format="compressed-tensors"): the folder loads with transformers and the real
compressed-tensors package and computes what the checkpoint applied to the base model computes; its packed
tensors decode, by a reading of the format's layout written here, to the checkpoint's codes; its size is
what the manifest's bits per parameter say; what the format cannot express is refused before writing."""

import json

import numpy as np
import pytest
import torch

from calib_assets.compression import compress_model, load_checkpoint, make_method_config, save_checkpoint
from calib_assets.compression.checkpoint import apply_checkpoint
from calib_assets.compression.export import WEIGHTS_FILE, export_model_folder
from calib_assets.compression.pack_quantized import NotExpressible, pack_rows
from calib_assets.models import load_model, parse_model_spec, prepare_model_folder, weights_fingerprint

IDS = torch.randint(0, 257, (4, 16), generator=torch.Generator().manual_seed(3))
SCHEMES = {  # what the format expresses: GPTQ symmetric and asymmetric, AWQ, RTN per channel
    "gptq-sym": ("gptq", {"bits": 4, "group_size": 32, "symmetric": True}),
    "gptq-asym": ("gptq", {"bits": 3, "group_size": 32}),
    "awq": ("awq", {"bits": 4, "group_size": 32}),
    "rtn-channel": ("rtn", {"bits": 5, "group_size": None}),
}


def _checkpoint(folder, method, params, path, ids=IDS):
    model, _ = load_model(folder)
    config = make_method_config(method, params)
    compressed = compress_model(model, ids, config, batch_size=2)
    save_checkpoint(path, compressed, {"base_fingerprint": weights_fingerprint(folder), "method": config.to_dict(),
                                       "method_label": config.label()})
    return path


def _load_exported(folder, symmetric: bool, dequantize: bool = False):
    """transformers with compressed-tensors; asymmetric folders through dequantize=True: with transformers 5.25
    and compressed-tensors 0.20 the compressed route builds zero-point parameters of the unpacked shape and
    refuses the format's packed ones (docs/export.md)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    dequantize = dequantize or not symmetric
    kwargs = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def _read_rows(words: torch.Tensor, bits: int, count: int) -> np.ndarray:
    """The format's layout read independently: per row, value j is bits j*bits .. j*bits + bits - 1 of the
    row's 32-bit words taken as one little-endian bit string."""
    out = np.zeros((words.shape[0], count), dtype=np.int64)
    for r, row in enumerate(words.numpy().astype(np.uint32)):
        stream = int("".join(format(int(word), "032b") for word in reversed(row)), 2)  # word 0 lowest
        out[r] = [(stream >> (j * bits)) & (2**bits - 1) for j in range(count)]
    return out


@pytest.mark.parametrize("bits, cols", [(3, 37), (4, 64), (5, 7), (8, 33), (2, 96)])
def test_pack_rows_is_the_documented_layout_and_compressed_tensors_own(bits, cols):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    codes = torch.randint(0, 2**bits, (5, cols), generator=torch.Generator().manual_seed(bits * cols))
    packed = pack_rows(codes.to(torch.uint8), bits)
    assert packed.dtype == torch.int32 and packed.shape == (5, -(-cols * bits // 32))
    assert np.array_equal(_read_rows(packed, bits, cols), codes.numpy())
    signed = (codes - 2 ** (bits - 1)).to(torch.int8)  # the format's signed codes
    assert torch.equal(packed, pack_to_int32(signed, bits))
    assert torch.equal(pack_rows(codes.T.to(torch.uint8), bits).T, pack_to_int32(signed, bits, packed_dim=0))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_through_transformers_gives_the_applied_checkpoints_logits(tiny_model_folder, tmp_path, scheme):
    method, params = SCHEMES[scheme]
    checkpoint = _checkpoint(tiny_model_folder, method, params, tmp_path / "ckpt")
    export = export_model_folder(checkpoint, tiny_model_folder, tmp_path / "ct", format="compressed-tensors",
                                 calibration={"calibration_set": {"partition": "tiny|src.s0"}})
    symmetric = params.get("symmetric", False)
    assert export["scheme"]["symmetric"] == symmetric and export["dtype"] == "float32"
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"], config["ignore"]) == ("compressed-tensors", "pack-quantized",
                                                                          ["lm_head"])
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"]) == (params["bits"], params["group_size"])
    assert weights["strategy"] == ("group" if params["group_size"] else "channel")
    applied, _ = load_model(tiny_model_folder)
    apply_checkpoint(applied, checkpoint)
    exported = _load_exported(tmp_path / "ct", symmetric)
    assert torch.equal(_logits(exported), _logits(applied))
    base, _ = load_model(tiny_model_folder)
    assert not torch.allclose(_logits(exported), _logits(base))  # the compression is really in there
    sidecar = json.loads((tmp_path / "ct" / "calibration.json").read_text())
    assert sidecar["calibration_set"]["partition"] == "tiny|src.s0"


@pytest.mark.parametrize("scheme", ["gptq-sym", "awq"])
def test_a_bfloat16_export_computes_what_the_dense_bfloat16_export_computes(tiny_model_folder, tmp_path, scheme):
    from transformers import AutoModelForCausalLM

    method, params = SCHEMES[scheme]
    checkpoint = _checkpoint(tiny_model_folder, method, params, tmp_path / "ckpt")
    export_model_folder(checkpoint, tiny_model_folder, tmp_path / "ct", format="compressed-tensors", dtype="bfloat16")
    export_model_folder(checkpoint, tiny_model_folder, tmp_path / "hf", dtype="bfloat16")
    symmetric = params.get("symmetric", False)
    exported = _load_exported(tmp_path / "ct", symmetric, dequantize=True)
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert exported.dtype == dense.dtype == torch.bfloat16
    assert torch.equal(_logits(exported), _logits(dense))
    if symmetric:  # the compressed route dequantizes with the scales cast to bf16 first: one rounding apart
        torch.testing.assert_close(_logits(_load_exported(tmp_path / "ct", True)), _logits(dense),
                                   rtol=0.05, atol=0.01)


@pytest.mark.parametrize("scheme", ["gptq-asym", "gptq-sym", "rtn-channel"])
def test_packed_tensors_decode_to_the_checkpoints_codes(tiny_model_folder, tmp_path, scheme):
    from safetensors.torch import load_file

    method, params = SCHEMES[scheme]
    checkpoint = _checkpoint(tiny_model_folder, method, params, tmp_path / "ckpt")
    export_model_folder(checkpoint, tiny_model_folder, tmp_path / "ct", format="compressed-tensors")
    stored = load_file(tmp_path / "ct" / WEIGHTS_FILE)
    compressed, _ = load_checkpoint(checkpoint)
    bits, half = params["bits"], 2 ** (params["bits"] - 1)
    for name, result in compressed.items():
        rows, cols = result.weight.shape
        assert stored[f"{name}.weight_shape"].tolist() == [rows, cols] and f"{name}.weight" not in stored
        q = _read_rows(stored[f"{name}.weight_packed"], bits, cols) - half  # the format's signed codes
        assert np.array_equal(q + half, result.unpacked_codes().numpy()), name
        assert torch.equal(stored[f"{name}.weight_scale"], result.scales), name
        if params.get("symmetric"):
            assert f"{name}.weight_zero_point" not in stored and bool((result.zeros == half).all())
        else:
            groups = result.zeros.shape[1]
            zero_point = _read_rows(stored[f"{name}.weight_zero_point"].T.contiguous(), bits, rows).T - half
            assert zero_point.shape == (rows, groups)
            assert np.array_equal(zero_point + half, result.zeros.numpy()), name
        # (q - zp) * scale, as the format defines it, is the checkpoint's weight
        step = params["group_size"] or cols
        zp = 0 if params.get("symmetric") else _per_column(zero_point, step, cols)
        dequantized = (torch.from_numpy(q) - zp).float() * _per_column(result.scales, step, cols)
        assert torch.equal(dequantized, result.weight), name


def _per_column(per_group, step: int, cols: int) -> torch.Tensor:
    return torch.as_tensor(per_group).repeat_interleave(step, dim=1)[:, :cols]


def _expected_weight_bytes(checkpoint, exported_tensors) -> float:
    """Bytes the manifest's bits per parameter give the linears, plus the tensors left in floating point."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    packed = {key.rsplit(".", 1)[0] for key in exported_tensors if key.endswith(".weight_packed")}
    rest = sum(t.numel() * t.element_size() for key, t in exported_tensors.items()
               if key.rsplit(".", 1)[0] not in packed)
    return manifest["bits_per_param"] * manifest["n_params"] / 8 + rest


def test_size_on_disk_is_what_the_manifest_reports(tiny_model_folder, tmp_path):
    from safetensors.torch import load_file

    checkpoint = _checkpoint(tiny_model_folder, "gptq", {"bits": 4, "group_size": 32}, tmp_path / "ckpt")
    export_model_folder(checkpoint, tiny_model_folder, tmp_path / "ct", format="compressed-tensors")
    file = tmp_path / "ct" / WEIGHTS_FILE
    expected = _expected_weight_bytes(checkpoint, load_file(file))
    assert file.stat().st_size == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("method, params, message", [
    ("spqr", {"bits": 3, "group_size": 16}, "quantized statistics"),
    ("wanda", {"n": 2, "m": 4}, "holds no quantized weights"),
    ("sparsegpt", {"n": 2, "m": 4, "bits": 4, "group_size": 32}, "pruned and quantized"),
    ("gptq", {"bits": 4, "group_size": 32, "act_order": True}, "act-order groups out of column order"),
])
def test_what_the_format_cannot_express_is_refused_before_writing(tiny_model_folder, tmp_path, method, params,
                                                                  message):
    checkpoint = _checkpoint(tiny_model_folder, method, params, tmp_path / "ckpt")
    with pytest.raises(NotExpressible, match=f"{message}.*integer weights of 1-8 bits"):
        export_model_folder(checkpoint, tiny_model_folder, tmp_path / "ct", format="compressed-tensors")
    assert not (tmp_path / "ct").exists()
    export_model_folder(checkpoint, tiny_model_folder, tmp_path / "hf")  # the dense folder stays available
    with pytest.raises(ValueError, match=r"format='onnx'.*\['hf', 'compressed-tensors'\]"):
        export_model_folder(checkpoint, tiny_model_folder, tmp_path / "x", format="onnx")


def test_act_order_with_static_groups_is_expressible(tiny_model_folder, tmp_path):
    params = {"bits": 4, "group_size": 32, "act_order": True, "static_groups": True, "symmetric": True}
    checkpoint = _checkpoint(tiny_model_folder, "gptq", params, tmp_path / "ckpt")
    export = export_model_folder(checkpoint, tiny_model_folder, tmp_path / "ct", format="compressed-tensors")
    assert export["scheme"]["actorder"] == "weight"
    applied, _ = load_model(tiny_model_folder)
    apply_checkpoint(applied, checkpoint)
    assert torch.equal(_logits(_load_exported(tmp_path / "ct", True)), _logits(applied))


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["gptq-sym", "gptq-asym", "awq"])
def test_round_trip_and_size_on_the_embedded_model(tmp_path_factory, tmp_path, scheme):
    from safetensors.torch import load_file

    folder = prepare_model_folder(parse_model_spec("smollm2-135m"), tmp_path_factory.mktemp("models"))
    method, params = SCHEMES[scheme]
    params = {**params, "group_size": 64}  # hidden size 576: 9 groups
    ids = torch.randint(0, 49152, (2, 64), generator=torch.Generator().manual_seed(0))
    checkpoint = _checkpoint(folder, method, params, tmp_path / "ckpt", ids=ids)
    export_model_folder(checkpoint, folder, tmp_path / "ct", format="compressed-tensors", dtype="float32")
    applied, _ = load_model(folder)
    apply_checkpoint(applied, checkpoint)
    torch.testing.assert_close(_logits(_load_exported(tmp_path / "ct", params.get("symmetric", False)), ids),
                               _logits(applied, ids), rtol=1e-5, atol=1e-4)
    file = tmp_path / "ct" / WEIGHTS_FILE
    assert file.stat().st_size == pytest.approx(_expected_weight_bytes(checkpoint, load_file(file)), rel=0.05)
