"""The CUDA path, where torch sees a GPU (skipped elsewhere): the layer-wise engine with device="cuda" on
a tiny random Llama held on the host, against the same run on the CPU and the methods' invariants.

Imports the library only (no Dagster, DuckDB or lm-eval), so that it runs on a GPU machine holding torch
and transformers alone (`make gpu-check`). CALIB_ASSETS_CUDA_TEST_DEVICE=cpu runs the same tests with the
CPU in the GPU's place: the GPU check's `--cpu` dry run, which proves the tests themselves work before
GPU time is spent on them."""

import os

import pytest
import torch

from calib_assets.compression import (
    AWQConfig,
    ExtraTensor,
    GPTQConfig,
    MagnitudeConfig,
    RTNConfig,
    SparseGPTConfig,
    SpQRConfig,
    WandaConfig,
    compress_model,
    layerwise_hidden_states,
)
from calib_assets.compression.packing import unpacked
from calib_assets.compression.quantizer import dequantize
from calib_assets_tests.helpers import tiny_llama_factory

DEVICE = os.environ.get("CALIB_ASSETS_CUDA_TEST_DEVICE", "cuda")
if DEVICE not in ("cuda", "cpu"):
    raise ValueError(f"CALIB_ASSETS_CUDA_TEST_DEVICE={DEVICE!r} is not allowed; allowed: ['cuda', 'cpu']")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="torch sees no CUDA device")

CONFIGS = [
    RTNConfig(bits=3, group_size=32),
    MagnitudeConfig(n=2, m=4),
    WandaConfig(n=2, m=4),
    GPTQConfig(bits=3, group_size=32),
    GPTQConfig(bits=4, group_size=32, act_order=True, true_sequential=True),
    SparseGPTConfig(n=2, m=4),
    SparseGPTConfig(sparsity=0.5, bits=4, group_size=32),
    SpQRConfig(bits=3, group_size=16),
    AWQConfig(bits=3, group_size=32),
]


@pytest.fixture(scope="module")
def make_model():
    return tiny_llama_factory()


@pytest.fixture(scope="module")
def calib_ids():
    return torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(3))


def test_layerwise_pass_on_cuda_equals_the_full_forward_on_cpu(make_model, calib_ids):
    model = make_model()
    with torch.no_grad():
        expected = model(calib_ids).logits
        hidden = layerwise_hidden_states(model, calib_ids, device=DEVICE, forward_dtype=torch.float32, batch_size=3)
        logits = model.lm_head(model.model.norm(hidden))
    assert hidden.device.type == "cpu"
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label())
def test_each_method_on_cuda_matches_its_cpu_run(config, make_model, calib_ids):
    """fp32 on both devices: the same decisions up to float near-ties, the same invariants, and the
    model and the results back on the host."""
    ids = calib_ids if config.needs_calibration else None
    on_cpu = compress_model(make_model(), ids, config, device="cpu", forward_dtype=torch.float32, batch_size=4)
    model = make_model()
    on_cuda = compress_model(model, ids, config, device=DEVICE, forward_dtype=torch.float32, batch_size=4)
    assert sorted(on_cuda) == sorted(on_cpu)
    assert all(p.device.type == "cpu" for p in model.parameters())
    params = dict(model.named_parameters())
    for name, result in on_cuda.items():  # linears by module name; AWQ's folded norms by parameter name
        reference = on_cpu[name]
        assert result.weight.device.type == "cpu" and torch.isfinite(result.weight).all()
        assert torch.equal(params.get(f"{name}.weight", params.get(name)).detach(), result.weight)
        close = torch.linalg.norm(result.weight - reference.weight) / torch.linalg.norm(reference.weight)
        assert close < 0.05, f"{name}: relative difference {close:.3f} from the CPU run"
        if isinstance(result, ExtraTensor):
            continue
        codes, mask = unpacked(result.packed_codes), unpacked(result.packed_mask)
        # decisions, not float values: grids fitted on updated weights differ in their last bits
        decisions = [(codes, reference.packed_codes.unpack())] if result.quantized else []
        decisions += [(mask, reference.packed_mask.unpack())] if result.pruned else []
        assert decisions, name
        for mine, theirs in decisions:
            same = (mine == theirs).float().mean()
            assert same >= 0.97, f"{name}: only {same:.1%} of the decisions equal the CPU run's"
        if mask is not None and getattr(config, "n", None):  # N:M: exactly n zeros in every m
            zeros = (~mask).reshape(mask.shape[0], -1, config.m).sum(-1)
            assert torch.all(zeros == config.n)
        if result.quantized and result.second_level is None:  # SpQR's weight differs at its outliers
            assert int(codes.max()) < 2**result.bits
            levels = dequantize(codes, result.scales, result.zeros, result.group_size, result.g_idx)
            if result.pruned:  # SparseGPT with joint quantization: pruned weights are exactly 0
                levels = levels * mask
            assert torch.equal(levels, result.weight), name


@pytest.mark.parametrize("config", [WandaConfig(n=2, m=4), GPTQConfig(bits=3, group_size=32)],
                         ids=lambda c: c.label())
def test_bf16_forward_on_cuda(config, make_model, calib_ids):
    """The resource's GPU default: bf16 forward passes, fp32 math, finite results on the host."""
    model = make_model()
    results = compress_model(model, calib_ids, config, device=DEVICE, forward_dtype=torch.bfloat16, batch_size=4)
    for name, result in results.items():
        assert result.weight.device.type == "cpu" and result.weight.dtype == torch.float32
        assert torch.isfinite(result.weight).all(), name
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
