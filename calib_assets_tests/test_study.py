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
        ({"calibration": {"n_samples": [4, 4], "seq_len": 64, "seeds": [0]}}, "distinct positive"),
        ({"calibration": {"n_samples": [], "seq_len": 64, "seeds": [0]}}, "n_samples"),
        ({"evaluation": {"extra_datasets": ["bbc-tech"]}}, "duplicate source or evaluation dataset label 'bbc-tech'"),
        ({"evaluation": {"extra_datasets": [{"kind": "hub", "path": "x"}]}}, "hub"),
        ({"evaluation": {"datasets": ["wikipedia"]}}, "wikipedia"),
        ({"colour": "blue"}, "colour"),
        ({"compute": {"model_dtype": "int8"}}, "model_dtype"),
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


def test_a_size_sweep_puts_the_set_size_in_the_calibration_key():
    study = _study(sources=["abc-news"], calibration={"n_samples": [8, 2], "seq_len": 64, "seeds": [0, 1]})
    assert study.calib_keys == ["abc-news.n2.s0", "abc-news.n2.s1", "abc-news.n8.s0", "abc-news.n8.s1"]
    assert [(study.parse_calib(key), study.calib_size(key)) for key in study.calib_keys] == [
        (("abc-news", 0), 2), (("abc-news", 1), 2), (("abc-news", 0), 8), (("abc-news", 1), 8)]
    with pytest.raises(StudyError, match=r"'abc-news.s0' is not in study.*abc-news.n2.s0"):
        study.parse_calib("abc-news.s0")
    assert _study().calib_size("bbc-tech.s1") == 4


def test_evaluation_only_datasets_are_corpora_but_not_calibration_sources():
    study = _study(evaluation={"extra_datasets": ["wikipedia"]})
    assert study.corpus_names == ["bbc-tech", "abc-news", "wikipedia"]
    assert study.source_names == ["bbc-tech", "abc-news"] and study.extra_dataset_names == ["wikipedia"]
    assert all(not key.startswith("wikipedia") for key in study.calib_keys)
    assert study.source("wikipedia").label == "wikipedia"


@pytest.mark.parametrize("name", ["paper", "quantity"])
def test_the_papers_grids_load_without_network(name):
    study = load_study(name)
    assert study.models and study.calibrated_methods and study.calib_keys


def test_missing_local_task_files_fail_before_any_compression(tmp_path):
    from calib_assets import steps

    present = tmp_path / "boolq.jsonl"
    present.write_text("{}\n")
    study = _study(evaluation={"tasks": [{"kind": "lm_eval", "name": "boolq", "data_files": str(present)},
                                         {"kind": "lm_eval", "name": "rte",
                                          "data_files": [str(tmp_path / "rte.jsonl")]}]})
    with pytest.raises(FileNotFoundError, match=r"task 'rte'.*rte.jsonl"):
        steps.materialize_offline_tasks(study, tmp_path)
    steps.check_task_data_files(_study(evaluation={"tasks": [{"kind": "lm_eval", "name": "boolq",
                                                                "data_files": str(present)}]}))


def test_offline_tasks_take_their_own_construction_parameters():
    study = _study(evaluation={"tasks": [{"kind": "cloze", "n_examples": 8, "max_context_words": 60},
                                         {"kind": "next_sentence", "n_choices": 3, "context_sentences": 2}]})
    cloze, next_sentence = study.offline_tasks
    assert cloze.builder_options() == {"min_context_words": 40, "max_context_words": 60}
    assert next_sentence.builder_options() == {"n_choices": 3, "context_sentences": 2}
    for bad, message in [({"kind": "cloze", "n_choices": 3}, "n_choices"),
                         ({"kind": "next_sentence", "n_choices": 1}, "n_choices"),
                         ({"kind": "cloze", "min_context_words": 50, "max_context_words": 20}, "max_context_words=20")]:
        with pytest.raises(ValueError, match=message):
            _study(evaluation={"tasks": [bad]})


def test_partition_keys_are_spelled_as_dagster_spells_them():
    import dagster as dg

    from calib_assets.naming import partition_key

    for dimensions in ({"variant": "m.gptq-w3", "calib": "web.s0"}, {"model": "m", "calib": "web.s0"},
                       {"model": "m", "source": "web"}):
        definition = dg.MultiPartitionsDefinition({name: dg.StaticPartitionsDefinition([value])
                                                   for name, value in dimensions.items()})
        assert partition_key(**dimensions) == definition.get_partition_keys()[0]
    assert partition_key(variant="m.gptq-w3", calib="web.s0") == "web.s0|m.gptq-w3"
