import pytest

from calib_assets.study import STUDY_ENV, Study, StudyError, load_study

BASE = {
    "name": "t",
    "models": [{"kind": "random", "name": "tiny", "hidden_size": 64, "intermediate_size": 128}],
    "methods": [{"method": "gptq", "bits": 3, "group_size": 32}, {"method": "rtn", "bits": 4, "group_size": 32}],
    "sources": ["bbc-tech", "abc-news"],
    "calibration": {"n_samples": 4, "seq_len": 64, "seeds": [0, 1]},
}


def _study(**changes):
    return Study.model_validate({**BASE, **changes})


def test_shipped_studies_load_and_derive_their_grid():
    default = load_study("default")
    assert len(default.models) == 1 and len(default.calib_keys) == len(default.sources) * len(default.calibration.seeds)
    assert {m.method for m in default.methods} >= {"gptq", "wanda", "rtn", "magnitude"}
    assert len(default.sources) >= 3 and default.calibration.seeds == [0, 1, 2]
    ci = load_study("ci")
    assert ci.models[0].kind == "random"


def test_partition_keys_split_calibration_dependent_methods_from_controls():
    study = _study()
    assert study.variant_keys == ["tiny.gptq-w3g32"]
    assert study.baseline_keys == ["tiny.dense", "tiny.rtn-w4g32"]
    assert study.calib_keys == ["bbc-tech.s0", "bbc-tech.s1", "abc-news.s0", "abc-news.s1"]
    assert study.parse_calib("abc-news.s1") == ("abc-news", 1)
    model, method = study.parse_variant("tiny.gptq-w3g32")
    assert model.name == "tiny" and method.config.bits == 3
    assert study.parse_variant("tiny.dense")[1] is None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"methods": [{"method": "obc", "bits": 3}]}, "obc"),
        ({"methods": [{"method": "gptq", "bitz": 3}]}, "bitz"),
        ({"methods": [{"method": "gptq", "bits": 3, "group_size": 48}]}, "48"),
        ({"methods": [{"method": "gptq", "bits": 3}, {"method": "gptq", "bits": 3}]}, "duplicate method 'gptq-w3g128'"),
        ({"sources": ["bbc-weather"]}, "bbc-weather"),
        ({"sources": ["bbc-tech", "bbc-tech"]}, "duplicate source 'bbc-tech'"),
        ({"models": ["gpt-99"]}, "gpt-99"),
        ({"calibration": {"n_samples": 4, "seq_len": 64, "seeds": [0, 0]}}, "distinct"),
        ({"calibration": {"n_samples": 0, "seq_len": 64, "seeds": [0]}}, "n_samples"),
        ({"evaluation": {"datasets": ["wikipedia"]}}, "wikipedia"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_studies_are_rejected_with_the_offending_value(changes, message):
    with pytest.raises(ValueError, match=message):
        _study(**changes)


def test_group_size_must_divide_the_embedded_model_widths():
    with pytest.raises(ValueError, match="128.*576|576.*128"):
        Study.model_validate({**BASE, "models": ["smollm2-135m"],
                              "methods": [{"method": "gptq", "bits": 4, "group_size": 128}]})


def test_a_study_needs_a_calibration_based_method():
    with pytest.raises(ValueError, match="needs calibration data"):
        _study(methods=[{"method": "rtn", "bits": 4, "group_size": 32}])


def test_study_files_are_chosen_by_name_env_or_path(tmp_path, monkeypatch):
    monkeypatch.setenv(STUDY_ENV, "ci")
    assert load_study().name == "ci"
    with pytest.raises(StudyError, match="unknown study 'nope'.*available"):
        load_study("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(str(bad))
    bad.write_text("name: x\nmodels: []\n")
    with pytest.raises(StudyError, match="is invalid"):
        load_study(str(bad))
