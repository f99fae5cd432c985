"""Linears that read the same input are compressed as one row-stacked matrix: same result as one by one."""

import torch

from calib_assets.compression import GPTQ, GPTQConfig, Wanda, WandaConfig
from calib_assets.compression.engine import _split_rows


def _inputs(cols=64, tokens=512, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, cols, generator=generator) @ torch.randn(cols, cols, generator=generator)


def _separately_and_stacked(make, weights, x):
    separate = []
    for weight in weights:
        compressor = make(weight.shape)
        compressor.add_batch(x)
        separate.append(compressor.compress(weight))
    stacked = make((sum(w.shape[0] for w in weights), weights[0].shape[1]))
    stacked.add_batch(x)
    return separate, _split_rows(stacked.compress(torch.cat(weights)), [w.shape[0] for w in weights])


def test_wanda_stacked_masks_equal_one_by_one():
    weights = [torch.randn(48, 64), torch.randn(16, 64), torch.randn(16, 64)]
    separate, stacked = _separately_and_stacked(lambda shape: Wanda(WandaConfig(n=2, m=4), shape), weights, _inputs())
    for one, many in zip(separate, stacked):
        assert torch.equal(one.unpacked_mask(), many.unpacked_mask()) and torch.equal(one.weight, many.weight)


def test_gptq_stacked_equals_one_by_one():
    weights = [torch.randn(48, 64), torch.randn(16, 64)]
    config = GPTQConfig(bits=3, group_size=32, blocksize=16)
    separate, stacked = _separately_and_stacked(lambda shape: GPTQ(config, shape), weights, _inputs())
    for one, many in zip(separate, stacked):
        assert one.weight.shape == many.weight.shape
        # the same arithmetic per row; BLAS blocking may differ in the last bit, rarely flipping a rounding
        assert (one.unpacked_codes() == many.unpacked_codes()).float().mean() > 0.995
        torch.testing.assert_close(one.scales, many.scales, rtol=1e-4, atol=1e-6)


def test_linears_reading_the_same_input_are_grouped():
    from transformers import LlamaConfig, LlamaForCausalLM

    from calib_assets.compression.engine import _capture_layer0_inputs, _groups_sharing_input

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    inputs = _capture_layer0_inputs(model.model, torch.randint(0, 256, (4, 16)), torch.device("cpu"),
                                    torch.float32, batch_size=2)
    groups = _groups_sharing_input(model.model.layers[0], inputs)
    assert sorted(map(sorted, groups)) == [
        ["mlp.down_proj"], ["mlp.gate_proj", "mlp.up_proj"],
        ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"], ["self_attn.o_proj"]]
