"""Study fields for calibration strategies, mixtures and self-generated sources: validated at load time."""

import pytest

from calib_assets.study import Study, load_study, mixture_counts

TINY = {"kind": "random", "name": "tiny-llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def _study(sources, **calibration):
    return Study.model_validate({
        "name": "t", "models": [TINY], "methods": [{"method": "gptq", "bits": 3, "group_size": 32}],
        "sources": sources, "calibration": {"n_samples": 4, "seq_len": 64, "seeds": [0, 1], **calibration}})


def test_source_entries_override_the_study_default():
    study = _study(["abc-news", {"name": "abc-news", "label": "abc-zipcal", "selection": {"kind": "zipcal"}},
                    {"name": "abc-news", "label": "abc-chunks", "sampling": "concat_chunk"}],
                   selection="coverage")
    assert study.selection_for("abc-news").kind == "coverage"
    assert study.selection_for("abc-zipcal").kind == "zipcal"
    assert study.sampling_for("abc-chunks").kind == "concat_chunk"
    assert study.sampling_for("abc-news").kind == "random_window"
    assert study.calib_keys[:2] == ["abc-news.s0", "abc-news.s1"]


def test_plain_studies_keep_the_reference_sampler():
    study = load_study("default")
    assert all(study.uses_reference_sampler(label) for label in study.source_names)
    assert study.calibration.descriptors


def test_shipped_strategies_study_loads():
    study = load_study("strategies")
    kinds = {study.source(label).kind for label in study.source_names}
    assert {"mixture", "generated"} <= kinds


@pytest.mark.parametrize("sources, calibration, message", [
    (["abc-news", {"kind": "mixture", "label": "mix", "components": [{"source": "abc-news", "weight": 1},
                                                                      {"source": "nope", "weight": 1}]}],
     {}, r"references \['nope'\].*allowed: \['abc-news'\]"),
    (["abc-news", {"kind": "mixture", "label": "mix", "components": [{"source": "abc-news", "weight": 1},
                                                                      {"source": "abc-news", "weight": 0}]}],
     {}, "greater than 0"),
    (["abc-news", "wikipedia", {"kind": "mixture", "label": "mix", "components": [
        {"source": "abc-news", "weight": 20}, {"source": "wikipedia", "weight": 1}]}],
     {}, r"components \['wikipedia'\] get 0 of n_samples=4"),
    (["abc-news", {"kind": "generated", "label": "self", "model": "llama-7b"}], {},
     r"model 'llama-7b' is not a model of the study; allowed: \['tiny-llama'\]"),
    (["abc-news", {"kind": "generated", "label": "self", "model": "tiny-llama", "prefix_source": "c4"}], {},
     "prefix_source 'c4' is not a plain source"),
    (["abc-news", {"kind": "generated", "label": "self", "model": "tiny-llama", "max_new_tokens": 32}], {},
     "can never hold a random window of seq_len=64"),
    (["abc-news", {"kind": "generated", "label": "self", "model": "tiny-llama", "n_documents": 5}], {},
     "n_documents=5"),
    (["abc-news"], {"sampling": {"kind": "padding", "min_tokens": 100}}, "min_tokens=100 exceeds seq_len=64"),
    (["abc-news"], {"selection": {"kind": "cola"}}, r"unknown selection kind 'cola'; allowed"),
    ([{"name": "abc-news", "sampling": {"kind": "windows"}}], {}, r"unknown sampling kind 'windows'"),
    ([{"kind": "ftp", "label": "x"}], {}, r"unknown source kind 'ftp'; allowed kinds"),
])
def test_bad_calibration_declarations_are_rejected_naming_the_value(sources, calibration, message):
    with pytest.raises(ValueError, match=message):
        _study(sources, **calibration)


def test_mixture_counts_use_largest_remainders():
    assert mixture_counts([3, 1], 4) == [3, 1]
    assert mixture_counts([1, 1, 1], 4) == [2, 1, 1]
    assert mixture_counts([0.5, 0.25, 0.25], 16) == [8, 4, 4]
    assert sum(mixture_counts([0.3, 0.3, 0.4], 7)) == 7
