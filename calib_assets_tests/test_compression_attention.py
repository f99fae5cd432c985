"""The engine's blocked causal attention against a float64 brute force and transformers' own paths."""

import pytest
import torch
from torch import nn

from calib_assets.compression import attention as blocked
from calib_assets.compression import compress_model, layerwise_hidden_states
from calib_assets.compression.config import WandaConfig
from calib_assets_tests.helpers import tiny_llama_factory


class _Attention(nn.Module):
    is_causal = True

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups


def _qkv(batch, heads, kv_heads, tokens, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # [B, T, H, D] transposed, as a Llama attention hands them over (not contiguous)
    q, k, v = (torch.randn(batch, tokens, h, dim, generator=gen).to(dtype).transpose(1, 2)
               for h in (heads, kv_heads, kv_heads))
    return q, k, v


def _brute_force(q, k, v, scale):
    """softmax(q k^T * scale + causal mask) v, head by head in float64; output [B, T, H, D]."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    scores = q.double() @ k.transpose(-1, -2) * scale
    tokens = q.shape[2]
    scores = scores.masked_fill(torch.ones(tokens, tokens, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("batch,heads,kv_heads,tokens", [(2, 4, 2, 24), (1, 9, 3, 130), (3, 2, 2, 64),
                                                         (2, 6, 1, 200)])
def test_blocked_attention_equals_the_brute_force(batch, heads, kv_heads, tokens):
    q, k, v = _qkv(batch, heads, kv_heads, tokens, 16, torch.float32)
    out = blocked.causal_attention_by_query_blocks(q, k, v, 0.3)
    assert out.shape == (batch, tokens, heads, 16) and out.is_contiguous()
    torch.testing.assert_close(out.double(), _brute_force(q, k, v, 0.3), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("batch,heads,kv_heads,tokens,dim", [(2, 9, 3, 150, 128), (1, 4, 4, 300, 64),
                                                             (3, 6, 2, 64, 32)])
def test_blocked_attention_in_bf16_rounds_as_eager_attention(batch, heads, kv_heads, tokens, dim):
    """The same rounding steps as transformers' eager attention: equal to it bit for bit here (PyTorch's SDPA
    kernel matched eager in about 40% of these outputs), at a scale that is not a power of two."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    q, k, v = _qkv(batch, heads, kv_heads, tokens, dim, torch.bfloat16)
    module = _Attention(heads // kv_heads).eval()
    hidden = torch.ones(tokens, tokens, dtype=torch.bool).triu(1)
    causal = torch.zeros(tokens, tokens, dtype=torch.bfloat16).masked_fill(hidden, torch.finfo(torch.bfloat16).min)
    expected, _ = eager_attention_forward(module, q, k, v, causal[None, None], scaling=dim**-0.5)
    out, weights = blocked.blocked_causal_attention(module, q, k, v, None, scaling=dim**-0.5)
    assert weights is None and out.dtype == torch.bfloat16
    assert (out == expected).float().mean() >= 0.99  # bit-equal unless a CPU's bf16 matmul sums in another order
    torch.testing.assert_close(out.float(), expected.float(), atol=2**-10, rtol=2**-7)


@pytest.mark.parametrize("case", ["mask", "dropout", "not causal", "softcap", "sliding window", "one query", "fp32"])
def test_other_cases_go_to_transformers_sdpa_unchanged(case):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = torch.float32 if case == "fp32" else torch.bfloat16
    q, k, v = _qkv(2, 4, 2, 1 if case == "one query" else 20, 8, dtype)
    module = _Attention(2)
    mask = torch.ones(2, 1, 20, 20, dtype=torch.bool).tril() if case == "mask" else None
    kwargs = {"dropout": 0.5 if case == "dropout" else 0.0, "is_causal": case != "not causal",
              "position_ids": torch.arange(q.shape[2])[None], "sliding_window": 4 if case == "sliding window" else None}
    if case == "softcap":
        kwargs["softcap"] = 30.0
        with pytest.raises(ValueError, match="softcap"):
            blocked.blocked_causal_attention(module, q, k, v, mask, **kwargs)
        return
    torch.manual_seed(0)
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)
    torch.manual_seed(0)
    out, _ = blocked.blocked_causal_attention(module, q, k, v, mask, **kwargs)
    assert torch.equal(out, expected)


def test_engine_runs_the_blocked_kernel_in_bf16_and_restores_sdpa(monkeypatch):
    model = tiny_llama_factory()()
    calls = []
    kernel = blocked.causal_attention_by_query_blocks
    monkeypatch.setattr(blocked, "causal_attention_by_query_blocks", lambda *a: calls.append(1) or kernel(*a))
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        truth = layerwise_hidden_states(model, ids, batch_size=2)  # fp32 keeps PyTorch's kernel
        assert not calls
        hidden = layerwise_hidden_states(model, ids, batch_size=2, forward_dtype=torch.bfloat16)
        assert len(calls) == 2 * 2  # two layers, two batches each
        model.config._attn_implementation = "eager"  # the same rounding steps, done by transformers
        eager = layerwise_hidden_states(model, ids, batch_size=2, forward_dtype=torch.bfloat16)
        assert len(calls) == 4
        model.config._attn_implementation = "sdpa"
    assert hidden.dtype == torch.bfloat16
    assert (hidden == eager).float().mean() >= 0.99  # transformers' eager attention, rounding for rounding
    error, eager_error = ((h.float() - truth).abs().max() for h in (hidden, eager))
    assert 0 < error <= 1.5 * eager_error
    compress_model(model, ids, WandaConfig(n=2, m=4), forward_dtype=torch.bfloat16, batch_size=2)
    assert len(calls) > 4
    assert model.config._attn_implementation == "sdpa"


def test_engine_leaves_other_attention_implementations_alone(monkeypatch):
    model = tiny_llama_factory()()
    model.config._attn_implementation = "eager"
    monkeypatch.setattr(blocked, "blocked_causal_attention", lambda *a, **k: pytest.fail("blocked kernel ran"))
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        hidden = layerwise_hidden_states(model, ids)
        layerwise_hidden_states(model, ids, forward_dtype=torch.bfloat16)
    torch.testing.assert_close(model.lm_head(model.model.norm(hidden)), expected, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "eager"
