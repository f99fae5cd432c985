import math

import pytest
import torch

from calib_assets.evaluation import heldout_token_stream, perplexity
from calib_assets.models import byte_level_tokenizer, load_model


def _reference_perplexity(model, stream, seq_len):
    """Token by token: -log p(next | window prefix), one window at a time."""
    total, count = 0.0, 0
    for start in range(0, len(stream) - seq_len + 1, seq_len):
        window = torch.tensor([stream[start : start + seq_len]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(window).logits[0].double(), dim=-1)
        for position in range(seq_len - 1):
            total -= log_probs[position, window[0, position + 1]].item()
            count += 1
    return math.exp(total / count), count


def test_perplexity_matches_a_token_by_token_computation(tiny_model_folder):
    model, tokenizer = load_model(tiny_model_folder)
    stream = heldout_token_stream(["the quick brown fox " * 20, "jumps over the lazy dog " * 20], tokenizer, 300)
    result = perplexity(model, stream, seq_len=64, batch_size=3)
    expected, count = _reference_perplexity(model, stream, 64)
    assert result.n_windows == 300 // 64 and result.n_tokens == count == 4 * 63
    assert result.perplexity == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("length", [256, 255, 257])  # 4 windows of 64 exactly, one token short, one over
def test_a_stream_of_whole_windows_scores_its_last_window(tiny_model_folder, length):
    model, tokenizer = load_model(tiny_model_folder)
    stream = heldout_token_stream(["the quick brown fox " * 20, "jumps over the lazy dog " * 20], tokenizer, length)
    assert len(stream) == length
    seq_len = 64
    starts = [start for start in range(len(stream)) if start + seq_len <= len(stream) and start % seq_len == 0]
    result = perplexity(model, stream, seq_len=seq_len, batch_size=3)
    expected, count = _reference_perplexity(model, stream, seq_len)
    assert result.n_windows == len(starts) == (4 if length >= 256 else 3)
    assert result.n_tokens == count == len(starts) * (seq_len - 1)
    assert result.perplexity == pytest.approx(expected, rel=1e-5)


def test_heldout_stream_joins_documents_with_eos_and_stops_at_max_tokens():
    tokenizer = byte_level_tokenizer()
    stream = heldout_token_stream(["ab", "cd", "ef"], tokenizer, max_tokens=5)
    eos = tokenizer.eos_token_id
    assert [tokenizer.decode([t]) for t in stream] == ["a", "b", "<eos>", "c", "d"]
    assert stream[2] == eos


def test_too_little_text_is_a_clear_error(tiny_model_folder):
    model, _ = load_model(tiny_model_folder)
    with pytest.raises(ValueError, match="fewer than one window of 64"):
        perplexity(model, list(range(10)), seq_len=64)
