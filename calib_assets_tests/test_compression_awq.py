"""AWQ against RTN on inputs with salient channels, scale folding on a tiny Llama (function unchanged), and
compress_model + checkpoints with the folded norm weights, bit for bit."""

import re

import pytest
import torch

from calib_assets.compression import (
    RTN,
    AWQConfig,
    ExtraTensor,
    RTNConfig,
    apply_checkpoint,
    compress_model,
    load_checkpoint,
    make_method_config,
    save_checkpoint,
)
from calib_assets.compression.awq import (
    awq_linear,
    fake_quantize,
    fold_scale,
    scale_groups,
    search_clip,
    search_scale,
)
from calib_assets_tests.helpers import float_bits, output_error, salient_inputs


def _salient_inputs(cols: int, tokens: int = 2048, seed: int = 0) -> torch.Tensor:
    """Correlated inputs with three large-magnitude channels spread over the width."""
    return salient_inputs(cols, tokens, seed, channels=(5, cols // 2 + 6, cols - 27), factor=15)


@pytest.mark.parametrize("config", [AWQConfig(group_size=32), AWQConfig(bits=3, group_size=64),
                                    AWQConfig(group_size=32, clip=False)], ids=lambda c: c.label())
def test_awq_beats_rtn_on_salient_channels(config):
    torch.manual_seed(0)
    w, x = torch.randn(48, 128), _salient_inputs(128)
    result, s = awq_linear(w, x, config)
    effective = result.weight / s  # what the folded pair computes on the original inputs
    rtn = RTN(RTNConfig(bits=config.bits, group_size=config.group_size), w.shape).compress(w)
    assert output_error(w, effective, x) < 0.85 * output_error(w, rtn.weight, x)
    assert result.info["awq_ratio"] > 0
    levels = max(result.weight[r, g : g + config.group_size].unique().numel()
                 for r in range(48) for g in range(0, 128, config.group_size))
    assert levels <= 2**config.bits


def test_scale_search_contains_rtn_and_clip_search_never_hurts():
    torch.manual_seed(1)
    config = AWQConfig(group_size=32)
    w, x = torch.randn(16, 64), _salient_inputs(64, tokens=512, seed=1)
    losses = []

    def loss_of(trial):
        losses.append(float((x @ trial[0].T - x @ w.T).square().mean()))
        return losses[-1]

    _, info = search_scale(x.abs().mean(dim=0), [w], loss_of, config)
    assert len(losses) == 20
    assert losses[0] == pytest.approx(float((x @ fake_quantize(w, config).T - x @ w.T).square().mean()))  # a = 0: RTN
    assert info["awq_loss"] == min(losses)
    max_val = search_clip(w, x, config)
    org_max = w.abs().view(16, 2, 32).amax(dim=-1)
    assert max_val.shape == (16, 2) and (max_val <= org_max).all() and (max_val >= 0.5 * org_max - 1e-6).all()
    bound = max_val.repeat_interleave(32, dim=1)
    clipped = fake_quantize(torch.maximum(torch.minimum(w, bound), -bound), config)

    def per_group_error(q):  # [groups, rows]: each group's partial product error, on the 512 tokens
        return torch.stack([(x[:, g : g + 32] @ (q - w)[:, g : g + 32].T).square().mean(dim=0) for g in (0, 32)])

    assert (per_group_error(clipped) <= per_group_error(fake_quantize(w, config)) * (1 + 1e-4)).all()
    assert (per_group_error(clipped) < per_group_error(fake_quantize(w, config)) * 0.999).any()


def _tiny(kv_heads=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=kv_heads, intermediate_size=128, vocab_size=256)).eval()


@pytest.mark.parametrize("kv_heads, n_groups", [(2, 3), (4, 4)])  # GQA: v_proj -> o_proj skipped
def test_folding_scales_keeps_the_block_function(kv_heads, n_groups):
    from calib_assets.compression.engine import _capture_layer0_inputs
    from calib_assets.compression.layerwise import layer_output as _output

    model = _tiny(kv_heads)
    layer = model.model.layers[0]
    groups = scale_groups(layer)
    assert len(groups) == n_groups
    with torch.no_grad():
        inputs = _capture_layer0_inputs(model.model, torch.randint(0, 256, (3, 16)), torch.device("cpu"),
                                        torch.float32, batch_size=2)
        before = [_output(layer, hidden, kwargs) for hidden, kwargs in inputs]
        params = dict(layer.named_parameters())
        gen = torch.Generator().manual_seed(2)
        for group in groups:
            width = params[f"{group.linears[0]}.weight"].shape[1]
            fold_scale(params, group, torch.rand(width, generator=gen) * 4 + 0.25)
        after = [_output(layer, hidden, kwargs) for hidden, kwargs in inputs]
    assert not torch.equal(params["input_layernorm.weight"], _tiny(kv_heads).model.layers[0].input_layernorm.weight)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


LINEAR_NAMES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
NORMS = [f"model.layers.{i}.{norm}.weight" for i in range(2)
         for norm in ("input_layernorm", "post_attention_layernorm")]


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_compress_model_and_checkpoint_are_bit_exact(kv_heads, tmp_path):
    ids = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(1))
    base = _tiny(kv_heads)
    model = _tiny(kv_heads)
    config = AWQConfig(group_size=32)
    results = compress_model(model, ids, config, batch_size=4)
    linears = [f"model.layers.{i}.{name}" for i in range(2) for name in LINEAR_NAMES]
    assert sorted(results) == sorted(linears + NORMS)
    state, base_state = model.state_dict(), base.state_dict()
    for name in linears:
        assert torch.equal(float_bits(state[f"{name}.weight"]), float_bits(results[name].weight))
        assert results[name].quantized and results[name].bits == 4
    for name in NORMS:
        assert isinstance(results[name], ExtraTensor)
        assert torch.equal(float_bits(state[name]), float_bits(results[name].weight))
        assert not torch.equal(state[name], base_state[name])  # 1/s folded in
    with torch.no_grad():
        awq_error = float((model(ids).logits - base(ids).logits).square().mean())
        scale = float(base(ids).logits.square().mean())
    assert awq_error < 0.05 * scale

    manifest = save_checkpoint(tmp_path / "ckpt", results, {"method": config.to_dict()})
    assert sorted(manifest["extra"]) == sorted(NORMS) and sorted(manifest["layers"]) == sorted(linears)
    assert manifest["n_params"] == sum(results[name].weight.numel() for name in linears)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert sorted(loaded) == sorted(results)
    for name, result in results.items():
        assert type(loaded[name]) is type(result)
        assert torch.equal(float_bits(loaded[name].weight), float_bits(result.weight))
    fresh = _tiny(kv_heads)
    apply_checkpoint(fresh, tmp_path / "ckpt")
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(float_bits(tensor), float_bits(state[key])), key


def test_extra_tensor_mismatch_is_rejected(tmp_path):
    extra = {"model.layers.0.input_layernorm.weight": ExtraTensor(weight=torch.ones(32)),
             "model.layers.0.mlp.up_proj": RTN(RTNConfig(group_size=32), (128, 64)).compress(torch.randn(128, 64))}
    save_checkpoint(tmp_path / "shape", extra, {})
    with pytest.raises(ValueError, match=r"input_layernorm\.weight.*shape"):
        apply_checkpoint(_tiny(), tmp_path / "shape")
    save_checkpoint(tmp_path / "name", {**extra, "model.layers.0.input_layernorm.weight": ExtraTensor(
        weight=torch.ones(64)), "model.layers.0.nope.weight": ExtraTensor(weight=torch.ones(64))}, {})
    with pytest.raises(ValueError, match=r"nope\.weight.*not a parameter"):
        apply_checkpoint(_tiny(), tmp_path / "name")


def test_config_validation_and_labels():
    assert AWQConfig().label() == "awq-w4g128"
    assert AWQConfig(bits=3, group_size=64, clip=False).label() == "awq-w3g64-noclip"
    assert re.fullmatch(r"[a-z0-9-]+", AWQConfig(n_grid=10, clip_grid=10, max_shrink=0.25).label())
    config = make_method_config("awq", {"group_size": 64})
    assert make_method_config("awq", config.to_dict()) == config
    assert AWQConfig(search_samples=8).label() == "awq-w4g128-ss8"
    assert AWQConfig.needs_calibration
    for params, needle in [({"bits": 9}, "bits=9"), ({"max_shrink": 1.0}, "max_shrink=1.0"),
                           ({"n_grid": 0}, "n_grid=0"), ({"clip": "yes"}, "clip"),
                           ({"search_samples": 0}, "search_samples=0")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            make_method_config("awq", params)
    with pytest.raises(ValueError, match="n_grid") as error:
        make_method_config("awq", {"grid": 20})
    assert "max_shrink" in str(error.value)
    with pytest.raises(ValueError, match=r"q_proj.*group_size=48.*in_features=64"):
        compress_model(_tiny(), torch.zeros(2, 8, dtype=torch.long), AWQConfig(group_size=48))


def test_fake_quantize_is_rtn_bit_for_bit():
    torch.manual_seed(3)
    w = torch.randn(24, 128) * torch.rand(24, 1)
    w[3, 32:64] = 0  # a flat group
    for config in (AWQConfig(bits=3, group_size=32), AWQConfig(bits=4, group_size=64, symmetric=True),
                   AWQConfig(bits=4, group_size=None)):
        rtn = RTN(RTNConfig(bits=config.bits, group_size=config.group_size, symmetric=config.symmetric), w.shape)
        assert torch.equal(float_bits(fake_quantize(w, config)), float_bits(rtn.compress(w).weight))


def test_gram_forms_match_the_token_products():
    from calib_assets.compression.awq import output_error, search_clip_gram

    torch.manual_seed(4)
    w, x = torch.randn(40, 128), _salient_inputs(128, tokens=300, seed=2)
    delta = torch.randn(40, 128) * 0.01
    assert output_error(delta, x.T @ x, 300) == pytest.approx(float((x @ delta.T).square().mean()), rel=1e-4)
    # the clip search against a plain loop: every row and group gets the least-error shrink step
    config = AWQConfig(bits=3, group_size=32)
    max_val = search_clip_gram(w, torch.stack([x[:, g:g + 32].T @ x[:, g:g + 32] for g in range(0, 128, 32)]),
                               config)
    org_max = w.abs().view(40, 4, 32).amax(dim=-1)
    errors = []
    for k in range(10):
        bound = (org_max * (1 - k / 20)).repeat_interleave(32, dim=1)
        q = fake_quantize(torch.maximum(torch.minimum(w, bound), -bound), config)
        errors.append(torch.stack([(x[:, g:g + 32] @ (q - w)[:, g:g + 32].T).square().mean(dim=0)
                                   for g in range(0, 128, 32)]).T)  # [rows, groups]
    errors = torch.stack(errors)  # [steps, rows, groups]
    chosen = torch.round((1 - max_val / org_max) * 20).long()  # the step each (row, group) took
    picked = errors.gather(0, chosen[None])[0]
    assert (picked <= errors.min(dim=0).values * (1 + 1e-4)).all()


def test_search_on_the_first_samples():
    """search_samples cuts the scale search's attention and MLP trials to the first samples, mid-batch
    too: the same scales as calls of one sample each, of which the first ones are taken whole; a limit of
    all samples or more is the full search, bit for bit."""
    from calib_assets.compression.awq import _Recorder, first_samples
    from calib_assets.compression.engine import _capture_layer0_inputs
    from calib_assets.compression.layerwise import run_layer

    ids = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(2))

    def ratios(config, batch_size):
        results = compress_model(_tiny(), ids, config, batch_size=batch_size)
        return {name: r.info["awq_ratio"] for name, r in results.items() if "awq_ratio" in r.info}

    full = compress_model(_tiny(), ids, AWQConfig(group_size=32), batch_size=4)
    for limit in (6, 100):
        limited = compress_model(_tiny(), ids, AWQConfig(group_size=32, search_samples=limit), batch_size=4)
        assert all(torch.equal(float_bits(limited[name].weight), float_bits(full[name].weight)) for name in full)
    cut = ratios(AWQConfig(group_size=32, search_samples=3), batch_size=4)  # 4 + 2: the first call cut to 3
    assert cut == ratios(AWQConfig(group_size=32, search_samples=3), batch_size=1)
    assert cut != ratios(AWQConfig(group_size=32, search_samples=1), batch_size=1)

    model = _tiny()
    layer = model.model.layers[0]
    inputs = _capture_layer0_inputs(model.model, ids, torch.device("cpu"), torch.float32, 4)
    recorder = _Recorder(layer, ["self_attn", "mlp"])
    run_layer(layer, inputs)
    recorder.remove()
    def hidden_states(call):  # the [batch, tokens, hidden] tensors among a call's arguments
        args, kwargs = call
        return [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim() == 3
                and t.shape[-1] == 64]

    for name in ("self_attn", "mlp"):
        calls = first_samples(recorder.calls[name], [4, 2], 3)
        (cut_hidden,), (first_hidden,) = hidden_states(calls[0]), hidden_states(recorder.calls[name][0])
        assert len(calls) == 1 and torch.equal(cut_hidden, first_hidden[:3])


def test_recorded_gram_of_bf16_inputs_is_exact():
    """A bf16 forward pass's inputs: G = X^T X equals the float64 product of the same values to fp32
    accuracy (on a CPU with bf16 units it is computed there), and the matmul setting is restored."""
    from torch import nn

    from calib_assets.compression.awq import _Recorder

    layer = nn.Sequential(nn.Linear(40, 8)).to(torch.bfloat16)
    precision = torch.backends.mkldnn.matmul.fp32_precision
    recorder = _Recorder(layer, [])
    x = _salient_inputs(40, 300).bfloat16()
    with torch.no_grad():
        for part in x.split([100, 200]):
            layer(part)
    recorder.remove()
    expected = x.double().T @ x.double()
    assert recorder.tokens["0"] == 300
    assert torch.allclose(recorder.gram["0"].double(), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    assert torch.backends.mkldnn.matmul.fp32_precision == precision
