"""Shared builders for the compression tests."""

import torch


def correlated_inputs(cols: int, tokens: int = 512, seed: int = 0) -> torch.Tensor:
    """Calibration inputs whose features are correlated (the case where Hessian-aware methods help)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, cols, generator=gen)
    mixing = torch.randn(cols, cols, generator=gen) / cols**0.5 + torch.eye(cols) * 0.1
    return z @ mixing


def tiny_llama_factory(kv_heads: int = 2):
    """A function that returns fresh copies of one tiny random Llama (same weights every call)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv_heads,
                         intermediate_size=128, vocab_size=256)
    state = LlamaForCausalLM(config).state_dict()

    def make():
        model = LlamaForCausalLM(config).eval()
        model.load_state_dict(state)
        return model

    return make
