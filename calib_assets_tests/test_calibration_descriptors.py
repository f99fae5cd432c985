"""Descriptors against hand computations on tiny texts and token rows."""

import math

import pytest

from calib_assets.calibration.descriptors import (
    describe,
    duplication_share,
    eval_overlap,
    ngrams,
    sample_flags,
    word_ngram_set,
    zipf_exponent,
)

ENGLISH = ("The council said that the new library would open in the spring, and that it was one of the "
           "first of its kind in the region.")


def test_token_counts_ratio_and_duplication_by_hand():
    result = describe([[1, 2, 3, 4, 1, 2, 3, 4]], [ENGLISH])["set"]
    assert result["token_count"] == 8 and result["unique_tokens"] == 4
    assert result["type_token_ratio"] == 0.5
    # 4-grams: 1234 2341 3412 4123 1234 -> 5 occurrences, 4 distinct
    assert result["ngram4_duplication"] == pytest.approx(0.2)


def test_padding_is_not_counted():
    result = describe([[7, 8, 9, 0, 0, 0]], [ENGLISH], effective_tokens=[3])["set"]
    assert result["token_count"] == 3 and result["unique_tokens"] == 3


def test_zipf_exponent_of_an_exact_zipf_law_is_one():
    tokens = [1] * 12 + [2] * 6 + [3] * 4 + [4] * 3  # f(r) = 12 / r
    assert zipf_exponent(tokens) == pytest.approx(1.0)
    assert math.isnan(zipf_exponent([5, 5, 5]))


def test_perplexity_mean_and_sample_std():
    result = describe([[1, 2], [3, 4]], [ENGLISH, ENGLISH + " More."], perplexities=[2.0, 4.0])["set"]
    assert result["perplexity_mean"] == 3.0 and result["perplexity_std"] == pytest.approx(math.sqrt(2))


def test_eval_overlap_counts_shared_word_4grams():
    grams = word_ngram_set(["A cat sat on the mat today."])
    # the set's 4-grams: (the cat sat on) (cat sat on the) (sat on the mat); the last two are in the eval text
    assert eval_overlap(["The cat sat on the mat"], grams) == pytest.approx(2 / 3)


def test_ngrams_and_duplication_helpers():
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    assert duplication_share([]) == 0.0 and duplication_share([(1,), (1,)]) == 0.5


def test_flags_on_hand_made_samples():
    texts = [
        ENGLISH,
        "Click here to subscribe to our newsletter, and read all of the stories that we have for you today.",
        "Der Hund läuft schnell über die Straße und bellt laut, während die Kinder spielen.",
        ENGLISH,
        ENGLISH,
    ]
    flags = sample_flags(texts, [64, 64, 64, 64, 10])
    assert flags == [[], ["boilerplate"], ["non_english"], ["duplicate"], ["short", "duplicate"]]


def test_repetitive_text_is_boilerplate():
    assert sample_flags(["the menu and the menu and the menu and the menu and the menu"], [64]) == [["boilerplate"]]


def test_flag_counts_reach_the_set_descriptors():
    result = describe([[1] * 4, [2] * 4], [ENGLISH, ENGLISH])
    assert result["set"]["n_duplicate"] == 1 and result["samples"][1]["flags"] == ["short", "duplicate"]
