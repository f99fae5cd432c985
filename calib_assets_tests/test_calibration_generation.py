"""Self-generated calibration data on the tiny random model: deterministic, sized, filtered as declared."""

import numpy as np
import pytest

from calib_assets.calibration.generation import perplexity_filter, prompts, self_generate
from calib_assets.calibration.scoring import row_perplexities
from calib_assets.models import load_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from calib_assets.models import RandomLlama, prepare_model_folder

    return load_model(prepare_model_folder(RandomLlama(name="tiny"), tmp_path_factory.mktemp("models")))


def test_perplexity_filter_by_hand():
    values = [5.0, 50.0, 3.0, float("nan"), 7.0]
    assert perplexity_filter(values, max_perplexity=10) == [0, 2, 4]
    assert perplexity_filter(values, max_perplexity=10, keep_fraction=0.5) == [0, 2]  # ceil(1.5) = 2 lowest
    assert perplexity_filter(values) == [0, 1, 2, 4]


def test_prompts_from_bos_or_prefixes(tiny):
    _, tokenizer = tiny
    assert prompts(tokenizer, 3) == [[tokenizer.eos_token_id]] * 3  # the byte tokenizer's BOS is its EOS
    assert prompts(tokenizer, 3, [[1, 2, 3, 4], [5, 6]], prefix_tokens=2) == [[1, 2], [5, 6], [1, 2]]


def test_generation_is_deterministic_per_seed_and_filtered(tiny):
    model, tokenizer = tiny
    options = dict(n_documents=6, max_new_tokens=12, prefixes=[[72, 101, 108, 108, 111]], prefix_tokens=3)
    everything, stats = self_generate(model, tokenizer, seed=1, **options)
    kept, _ = self_generate(model, tokenizer, seed=1, keep_fraction=0.5, **options)  # same draws, half kept
    other, _ = self_generate(model, tokenizer, seed=2, **options)
    assert stats["generated"] == len(everything) == 6 and len(kept) == 3
    assert [g.token_ids for g in everything] != [g.token_ids for g in other]
    lowest = sorted(everything, key=lambda g: g.perplexity)[:3]
    assert sorted(g.token_ids for g in kept) == sorted(g.token_ids for g in lowest)
    for generation in kept:
        assert generation.token_ids[:3] == (72, 101, 108) and len(generation.token_ids) <= 3 + 12
        recomputed = row_perplexities(model, [generation.token_ids])[0]
        assert generation.perplexity == pytest.approx(recomputed, rel=1e-4)


def test_row_perplexity_ignores_padding(tiny):
    model, _ = tiny
    row = [10, 20, 30, 40, 50]
    padded = row + [0, 0, 0]
    plain = row_perplexities(model, [row])[0]
    masked = row_perplexities(model, [padded], lengths=[5])[0]
    assert masked == pytest.approx(plain, rel=1e-4)
    assert np.isfinite(plain) and plain > 1
