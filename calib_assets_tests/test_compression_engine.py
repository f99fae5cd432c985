"""The layer-wise engine and compressed checkpoints on a tiny random Llama."""

import dataclasses
import hashlib
import json

import pytest
import torch
from torch import nn

from calib_assets.artifacts import CorruptArtifact
from calib_assets.compression import (
    AWQConfig,
    CompressedLinear,
    GPTQConfig,
    MagnitudeConfig,
    RTNConfig,
    SparseGPTConfig,
    SpQRConfig,
    WandaConfig,
    apply_checkpoint,
    compress_model,
    layerwise_hidden_states,
    load_checkpoint,
    save_checkpoint,
)
from calib_assets.compression import checkpoint as checkpoint_module
from calib_assets.compression.packing import PackedTensor
from calib_assets.compression.quantizer import dequantize
from calib_assets_tests.helpers import float_bits

LINEAR_NAMES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
ALL_LINEARS = [f"model.layers.{i}.{name}" for i in range(2) for name in LINEAR_NAMES]


@pytest.fixture(scope="module")
def base_state():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=256)
    model = LlamaForCausalLM(config)
    return config, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def make_model(base_state):
    from transformers import LlamaForCausalLM

    def make():
        config, state = base_state
        model = LlamaForCausalLM(config).eval()
        model.load_state_dict(state)
        return model

    return make


@pytest.fixture(scope="module")
def calib_ids():
    return torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(1))


def _assert_bit_equal(a: torch.Tensor, b: torch.Tensor):
    assert a.shape == b.shape
    assert torch.equal(float_bits(a), float_bits(b))


def test_layerwise_pass_equals_full_forward(make_model, calib_ids):
    model = make_model()
    with torch.no_grad():
        expected = model(calib_ids).logits
        hidden = layerwise_hidden_states(model, calib_ids, batch_size=4)  # 6 rows: a ragged last batch
        logits = model.lm_head(model.model.norm(hidden))
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_layers_returning_tuples_are_handled(make_model, calib_ids):
    model = make_model()
    with torch.no_grad():
        expected = model(calib_ids).logits
        handles = [layer.register_forward_hook(lambda m, a, out: (out, None)) for layer in model.model.layers]
        hidden = layerwise_hidden_states(model, calib_ids)
        for handle in handles:
            handle.remove()
        logits = model.lm_head(model.model.norm(hidden))
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_bf16_pass_leaves_weights_untouched(make_model, base_state, calib_ids):
    model = make_model()
    with torch.no_grad():
        expected = model(calib_ids).logits
        hidden = layerwise_hidden_states(model, calib_ids, forward_dtype=torch.bfloat16)
        logits = model.lm_head(model.model.norm(hidden.float()))
    assert hidden.dtype == torch.bfloat16
    assert (logits - expected).abs().max() < 0.1 * expected.abs().max()
    for name, tensor in model.state_dict().items():
        _assert_bit_equal(tensor, base_state[1][name])


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("cuda_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_forward_dtype_is_one_rule(monkeypatch, request, native, cuda_bf16, expected):
    """bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp16 on
    older GPUs, fp32 on CPUs that would emulate bf16; an explicit choice is taken as given."""
    from calib_assets import compute

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    compute.cpu_has_native_bf16.cache_clear()  # the probe is asked once per process
    request.addfinalizer(compute.cpu_has_native_bf16.cache_clear)
    assert compute.resolve_forward_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert compute.resolve_forward_dtype("auto", "cuda") == expected
    assert compute.resolve_forward_dtype("float32", "cuda") == torch.float32
    assert compute.resolve_forward_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="'float8'.*allowed"):
        compute.resolve_forward_dtype("float8", "cpu")


def test_cpu_bf16_probe_matches_the_cpu_flags():
    """Independent truth on Linux: the kernel's CPU flags."""
    from pathlib import Path

    from calib_assets.compute import cpu_has_native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = set(cpuinfo.read_text().split())
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


CONFIGS = [
    RTNConfig(bits=3, group_size=32),
    MagnitudeConfig(sparsity=0.5),
    MagnitudeConfig(n=2, m=4),
    WandaConfig(sparsity=0.4),
    WandaConfig(n=2, m=4),
    GPTQConfig(bits=3, group_size=64),
]


def _expected_pruned(config, rows, cols):
    if config.sparsity is None:
        return rows * cols * config.n // config.m
    if config.method == "wanda":  # compared within each output row
        return rows * int(cols * config.sparsity)
    return int(rows * cols * config.sparsity)  # magnitude: one threshold per matrix


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label())
def test_compress_model_writes_returned_weights(config, make_model, base_state, calib_ids):
    model = make_model()
    calls = []
    ids = calib_ids if config.needs_calibration else None
    results = compress_model(model, ids, config, batch_size=4, progress=lambda *a: calls.append(a))
    assert sorted(results) == sorted(ALL_LINEARS)
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)]
    modules = dict(model.named_modules())
    for name, result in results.items():
        _assert_bit_equal(modules[name].weight, result.weight)
        assert not torch.equal(result.weight, base_state[1][f"{name}.weight"])
        if hasattr(config, "target_sparsity"):
            assert int((result.weight == 0).sum()) == _expected_pruned(config, *result.weight.shape)
    untouched = [k for k in base_state[1] if not any(k.startswith(n) for n in ALL_LINEARS)]
    assert "lm_head.weight" in untouched and "model.layers.0.input_layernorm.weight" in untouched
    for key in untouched:
        _assert_bit_equal(model.state_dict()[key], base_state[1][key])


@pytest.mark.parametrize("config", [GPTQConfig(bits=3, group_size=32), WandaConfig(n=2, m=4),
                                    AWQConfig(bits=3, group_size=32)], ids=lambda c: c.label())
def test_each_compressed_weight_is_held_once(config, make_model, calib_ids, monkeypatch):
    """A CUDA run brings results to the host by copying them (`CompressedLinear.to`), and each layer's
    parameters by copying them again; afterwards the model's parameter and the result are one tensor.
    The copying transfer is simulated on the CPU, where `.to("cpu")` would otherwise be a no-op."""
    original_to = CompressedLinear.to

    def copying_to(self, device):
        moved = original_to(self, device)
        return dataclasses.replace(moved, weight=moved.weight.clone())

    monkeypatch.setattr(CompressedLinear, "to", copying_to)
    model = make_model()
    results = compress_model(model, calib_ids, config, batch_size=4)
    modules = dict(model.named_modules())
    assert set(ALL_LINEARS) <= set(results)
    for name in ALL_LINEARS:
        assert modules[name].weight.data_ptr() == results[name].weight.data_ptr(), name


HELD_IN_BF16 = [GPTQConfig(bits=3, group_size=32), SparseGPTConfig(n=2, m=4), WandaConfig(n=2, m=4),
                 SpQRConfig(bits=3, group_size=16, outlier_threshold=0.05), AWQConfig(bits=3, group_size=32),
                 RTNConfig(bits=3, group_size=32)]


def _held_in_bf16_and_fp32(make_model):
    """One model held in bf16, and the same values held in fp32 (buffers such as inv_freq included)."""
    held = make_model().to(torch.bfloat16)
    same_values = make_model()
    same_values.load_state_dict({key: t.float() for key, t in held.state_dict().items()})
    for (_, a), (_, b) in zip(held.named_buffers(), same_values.named_buffers()):
        b.data = a.detach().float()
    return held, same_values


@pytest.mark.parametrize("config", HELD_IN_BF16, ids=lambda c: c.label())
def test_a_model_held_in_bf16_gets_its_fp32_results_rounded_once(config, make_model, calib_ids):
    """Independent truth: the same values held in fp32 and compressed in fp32, each result then rounded to
    bf16. The bf16-held model's parameters are its results' weights (one tensor, no fp32 copy kept)."""
    held, same_values = _held_in_bf16_and_fp32(make_model)
    ids = calib_ids if config.needs_calibration else None
    results = compress_model(held, ids, config, forward_dtype=torch.float32, batch_size=4)
    expected = compress_model(same_values, ids, config, forward_dtype=torch.float32, batch_size=4)
    assert sorted(results) == sorted(expected)
    modules = dict(held.named_modules())
    for name in ALL_LINEARS:
        result, truth = results[name], expected[name]
        assert result.weight.dtype == torch.bfloat16
        assert modules[name].weight.data_ptr() == result.weight.data_ptr(), name
        assert torch.equal(result.weight.view(torch.int16), truth.weight.to(torch.bfloat16).view(torch.int16)), name
        fields = {"codes": lambda r: r.unpacked_codes(), "mask": lambda r: r.unpacked_mask(),
                  "scales": lambda r: r.scales, "zeros": lambda r: r.zeros}
        for field, read in fields.items():
            if read(truth) is not None:
                assert torch.equal(read(result), read(truth)), (name, field)
    for key, tensor in held.state_dict().items():  # norms too (AWQ folds its scales into them)
        assert torch.equal(tensor, same_values.state_dict()[key].to(torch.bfloat16)), key


@pytest.mark.parametrize("dtype, release_memory, released",
                         [(torch.float32, None, False), (torch.bfloat16, None, True),
                          (torch.float32, True, True), (torch.bfloat16, False, False)])
def test_freed_memory_is_released_by_default_only_for_a_16_bit_model(dtype, release_memory, released, make_model,
                                                                     monkeypatch):
    """Before the first layer, after each linear's compression (RTN: no statistics pass, one linear per
    group without calibration) and after each layer, unless told otherwise."""
    import calib_assets.compute

    calls = []
    monkeypatch.setattr(calib_assets.compute, "release_freed_memory", lambda: calls.append(1) or True)
    model = make_model().to(dtype)
    layers = model.model.layers
    linears_per_layer = sum(isinstance(m, torch.nn.Linear) for m in layers[0].modules())
    compress_model(model, None, RTNConfig(bits=3, group_size=32), release_memory=release_memory)
    assert len(calls) == (1 + len(layers) * (linears_per_layer + 1) if released else 0)


def test_bf16_rounding_recounts_spqr_outliers(make_model, calib_ids):
    """Each SpQR result held in bf16 declares exactly the entries off its bf16 grid as outliers, and
    its bits per parameter are the paper's count for that number."""
    from calib_assets.compression.spqr import grid_statistics, outlier_mask, spqr_bits_per_param

    config = SpQRConfig(bits=3, group_size=16, outlier_threshold=0.05)
    held, _ = _held_in_bf16_and_fp32(make_model)
    results = compress_model(held, calib_ids, config, forward_dtype=torch.float32, batch_size=4)
    assert sum(r.info["outliers"] for r in results.values()) > 0
    for name, result in results.items():
        grid = dequantize(result.unpacked_codes(), *grid_statistics(result), result.group_size, result.g_idx)
        off_grid = result.weight.view(torch.int16) != grid.to(torch.bfloat16).view(torch.int16)
        assert torch.equal(outlier_mask(result), off_grid)
        assert result.info["outliers"] == int(off_grid.sum()), name
        assert result.info["bits_per_param"] == pytest.approx(
            spqr_bits_per_param(config, result.info["outliers"], result.weight.numel()))


def test_recount_drops_an_outlier_that_rounds_onto_its_grid():
    from calib_assets.compression.spqr import OUTLIER_BITS, recount_outliers

    codes = torch.tensor([[0, 1, 2, 3]], dtype=torch.uint8)
    scales, zeros = torch.tensor([[0.5]]), torch.tensor([[0.0]])
    grid = torch.tensor([[0.0, 0.5, 1.0, 1.5]])
    weight = grid.clone()
    weight[0, 1] = 0.5 + 2**-12  # an fp32 outlier: bf16 holds 8 bits of mantissa, so it rounds to 0.5
    weight[0, 3] = 1.75  # an outlier in bf16 too
    result = CompressedLinear(weight=weight.to(torch.bfloat16), packed_codes=PackedTensor.pack(codes), scales=scales,
                              zeros=zeros,
                              bits=2, group_size=4, info={"outliers": 2, "bits_per_param": 3.0})
    recount_outliers(result)
    assert result.info["outliers"] == 1
    assert result.info["bits_per_param"] == 3.0 - OUTLIER_BITS / 4


@pytest.mark.parametrize("config", HELD_IN_BF16[:4], ids=lambda c: c.label())
def test_checkpoint_of_a_bf16_held_model_round_trips(config, make_model, calib_ids, tmp_path):
    """Written into a fresh bf16 model, the checkpoint gives back the compressed model bit for bit; pruned
    values are stored in bf16 (two bytes each)."""
    held, _ = _held_in_bf16_and_fp32(make_model)
    results = compress_model(held, calib_ids, config, forward_dtype=torch.float32, batch_size=4)
    manifest = save_checkpoint(tmp_path / "ckpt", results, {})
    fresh = make_model().to(torch.bfloat16)
    apply_checkpoint(fresh, tmp_path / "ckpt")
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, held.state_dict()[key]), key
    if config.method in ("sparsegpt", "wanda"):
        name = ALL_LINEARS[0]
        values = manifest["layers"][name]["bytes"] - (results[name].weight.numel() + 7) // 8
        assert values == 2 * int(results[name].unpacked_mask().sum())


def _inputs_of(model, module_name, ids):
    captured = []
    module = dict(model.named_modules())[module_name]
    handle = module.register_forward_hook(lambda m, args, out: captured.append(args[0].detach().clone()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return torch.cat([c.reshape(-1, c.shape[-1]) for c in captured])


def _row_mask(metric, fraction):
    count = int(metric.shape[1] * fraction)
    mask = torch.ones_like(metric, dtype=torch.bool)
    for r in range(metric.shape[0]):
        for j in sorted(range(metric.shape[1]), key=lambda j: metric[r, j].item())[:count]:
            mask[r, j] = False
    return mask


def test_engine_is_sequential(make_model, base_state, calib_ids):
    """Layer 1 is calibrated on the outputs of the already-compressed layer 0, as a full forward shows."""
    config = WandaConfig(sparsity=0.5)
    results = compress_model(make_model(), calib_ids, config, forward_dtype=torch.float32, batch_size=4)
    reference = make_model()  # uncompressed model: layer 0's true inputs
    for layer in (0, 1):
        name = f"model.layers.{layer}.mlp.down_proj"
        x = _inputs_of(reference, name, calib_ids).double()
        metric = base_state[1][f"{name}.weight"].abs().double() * x.pow(2).mean(dim=0).sqrt()
        assert torch.equal(results[name].unpacked_mask(), _row_mask(metric, 0.5)), name
        # after layer 0 is compressed, the reference model shows layer 1 its compressed inputs
        modules = dict(reference.named_modules())
        for key, result in results.items():
            if key.startswith(f"model.layers.{layer}."):
                modules[key].weight.data.copy_(result.weight)


def test_incompatible_group_fails_before_any_work(make_model, base_state, calib_ids):
    model = make_model()
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*group_size=48.*in_features=64"):
        compress_model(model, calib_ids, GPTQConfig(group_size=48))
    for key, tensor in model.state_dict().items():
        _assert_bit_equal(tensor, base_state[1][key])
    with pytest.raises(ValueError, match="calibration_ids"):
        compress_model(model, None, GPTQConfig(group_size=32))


def test_nan_weight_error_names_the_layer(make_model):
    model = make_model()
    model.model.layers[1].mlp.up_proj.weight.data[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"model\.layers\.1\.mlp\.up_proj"):
        compress_model(model, None, RTNConfig(group_size=32))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label())
def test_checkpoint_round_trip_is_bit_exact(config, make_model, calib_ids, tmp_path):
    model = make_model()
    results = compress_model(model, calib_ids if config.needs_calibration else None, config, batch_size=4)
    path = tmp_path / "ckpt"
    manifest = save_checkpoint(path, results, {"base_model": "tiny-llama@abc", "method": config.to_dict()})
    assert sorted(p.name for p in path.iterdir()) == ["contents.json", "manifest.json", "tensors.safetensors"]
    sealed = json.loads((path / "contents.json").read_text())["files"]
    assert sealed == {name: {"bytes": (path / name).stat().st_size,
                             "sha256": hashlib.sha256((path / name).read_bytes()).hexdigest()}
                      for name in ("manifest.json", "tensors.safetensors")}
    assert manifest == json.loads((path / "manifest.json").read_text())
    assert manifest["base_model"] == "tiny-llama@abc"
    assert manifest["fingerprint"] == hashlib.sha256((path / "tensors.safetensors").read_bytes()).hexdigest()

    loaded, _ = load_checkpoint(path)
    for name, result in results.items():
        _assert_bit_equal(loaded[name].weight, result.weight)
        if result.unpacked_codes() is not None:
            assert torch.equal(loaded[name].unpacked_codes(), result.unpacked_codes())
        if result.unpacked_mask() is not None:
            assert torch.equal(loaded[name].unpacked_mask(), result.unpacked_mask())

    fresh = make_model()
    apply_checkpoint(fresh, path)
    compressed_state = model.state_dict()
    for key, tensor in fresh.state_dict().items():
        _assert_bit_equal(tensor, compressed_state[key])

    n_params = sum(r.weight.numel() for r in results.values())
    assert manifest["n_params"] == n_params
    if hasattr(config, "target_sparsity"):
        pruned = sum(_expected_pruned(config, *r.weight.shape) for r in results.values())
        assert manifest["sparsity"] == pruned / n_params


def test_three_bit_checkpoint_is_small(make_model, calib_ids, tmp_path):
    results = compress_model(make_model(), calib_ids, GPTQConfig(bits=3, group_size=64))
    manifest = save_checkpoint(tmp_path / "ckpt", results, {})
    fp32_bytes = 4 * manifest["n_params"]
    assert manifest["size_bytes"] < fp32_bytes / 7
    assert 3.0 < manifest["bits_per_param"] < 4.0  # 3 bits + per-group fp32 scale and uint8 zero
    assert (tmp_path / "ckpt" / "tensors.safetensors").stat().st_size < fp32_bytes / 6


def test_failed_write_leaves_no_partial_checkpoint(make_model, tmp_path, monkeypatch):
    results = compress_model(make_model(), None, RTNConfig(bits=4, group_size=32))
    path = tmp_path / "ckpt"
    first = save_checkpoint(path, results, {"run": 1})

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "write_json", explode)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, results, {"run": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers
    _, manifest = load_checkpoint(path)
    assert manifest == first

    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "new", results, {})
    assert not (tmp_path / "new").exists()


def test_corrupt_or_mismatched_checkpoint_is_rejected(make_model, tmp_path):
    results = compress_model(make_model(), None, MagnitudeConfig(sparsity=0.5))
    path = tmp_path / "ckpt"
    save_checkpoint(path, results, {})
    tensors = path / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifact, match=r"tensors\.safetensors was changed.*re-materialize its compressed_model"):
        load_checkpoint(path)
    (path / "contents.json").unlink()  # an unsealed checkpoint of an earlier version: the manifest still guards it
    with pytest.raises(ValueError, match="fingerprint"):
        load_checkpoint(path)

    save_checkpoint(path, {"model.layers.0.mlp.up_proj": results["model.layers.0.mlp.down_proj"]}, {})
    with pytest.raises(ValueError, match="shape"):
        apply_checkpoint(make_model(), path)
    other = nn.Module()
    with pytest.raises(ValueError, match="not a linear"):
        apply_checkpoint(other, path)


def _tiny_opt():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                       max_position_embeddings=64, word_embed_proj_dim=32)
    return OPTForCausalLM(config).eval()


def test_opt_layerwise_pass_equals_the_full_forward():
    model, ids = _tiny_opt(), torch.randint(0, 128, (5, 16))
    with torch.no_grad():
        expected = model(ids).logits
        hidden = layerwise_hidden_states(model, ids, batch_size=2)
        logits = model.lm_head(model.model.decoder.final_layer_norm(hidden))
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_opt_linears_are_compressed_under_their_full_names():
    model, ids = _tiny_opt(), torch.randint(0, 128, (4, 16))
    results = compress_model(model, ids, GPTQConfig(bits=3, group_size=16), forward_dtype=torch.float32)
    assert set(results) == {f"model.decoder.layers.{i}.{name}" for i in range(2) for name in
                            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                             "fc1", "fc2"]}
    weight = model.model.decoder.layers[1].fc2.weight
    assert max(len(torch.unique(group)) for group in weight.reshape(-1, 16)) <= 8


_ALLOCATION_PROBE = """
import sys, torch
from calib_assets.compute import release_freed_memory, reuse_freed_memory
def anon_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")) / 1024
tuned = reuse_freed_memory() if sys.argv[1] != "default" else False
before = anon_mb()
block = torch.ones(64 * 2**20)  # 256 MB, touched
during = anon_mb()
del block
if sys.argv[1] == "released":
    assert release_freed_memory()
print(tuned, round(during - before), round(anon_mb() - before))
"""


def test_reuse_freed_memory_keeps_freed_tensors_resident():
    """Control: glibc's default unmaps a freed 256 MB tensor at once; tuned, the memory stays for reuse
    until `release_freed_memory` hands it back."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")

    def probe(mode):
        out = subprocess.run([sys.executable, "-c", _ALLOCATION_PROBE, mode], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0] == "True", int(out[1]), int(out[2])

    _, grown, kept = probe("default")
    assert grown > 200 and kept < 50
    tuned, grown, kept = probe("tuned")
    if not tuned:
        pytest.skip("the C library is not glibc")
    assert grown > 200 and kept > 200
    _, grown, kept = probe("released")
    assert grown > 200 and kept < 50
