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


def salient_inputs(cols: int, tokens: int = 1024, seed: int = 0, channels=(3, 17, 40),
                   factor: float = 12) -> torch.Tensor:
    """`correlated_inputs` with a few large-magnitude channels (`channels` scaled by `factor`)."""
    x = correlated_inputs(cols, tokens, seed)
    x[:, list(channels)] *= factor
    return x


def output_error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    """||X W^T - X Q^T||: how far the compressed weight q moves the linear's outputs on inputs x."""
    return float(torch.linalg.norm(x @ w.T - x @ q.T))


def float_bits(t: torch.Tensor) -> torch.Tensor:
    """The fp32 bit patterns of a float tensor, for bit-exact comparison (-0.0 != 0.0)."""
    return t.detach().float().contiguous().view(torch.int32)
