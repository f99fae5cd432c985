"""Wrong inputs are refused before any work, naming the value and what is allowed (issue 21, item 4).

| case                                        | before                                   | now                                         |
| ------------------------------------------- | ---------------------------------------- | ------------------------------------------- |
| two model specs under one name              | one model cache, lineage of the other    | a cache folder per spec                     |
| calibration / evaluation seq_len > context  | ran (6000 on a 4,096-token model)        | refused at load, or at base_model for hub   |
| kl_tokens or max_tokens < evaluation seq_len| KL failed mid-run on array shapes        | refused at load                             |
| random bytes in a local .txt                | decoded as cp1252, used as calibration   | refused, naming the file (or its encoding)  |
| unknown lm_eval task name                   | found 27 s into the run                  | refused at load                             |
| unknown key                                 | raw pydantic text with a URL             | the key, where, and the allowed keys        |
"""

import json
import shutil

import pytest

from calib_assets import steps
from calib_assets.models import RandomLlama, cache_folder_name, prepare_model_folder
from calib_assets.sources import parse_source_spec
from calib_assets.sources.local import iter_local
from calib_assets.study import Study, StudyError, load_study

BASE = {
    "name": "t",
    "models": [{"kind": "random", "name": "tiny"}],
    "methods": [{"method": "gptq", "bits": 3, "group_size": 32}],
    "sources": ["bbc-tech"],
    "calibration": {"n_samples": 4, "seq_len": 64, "seeds": [0]},
    "evaluation": {"seq_len": 64},
}


def _study(**changes) -> Study:
    return Study.model_validate({**BASE, **changes})


def test_two_specs_under_one_name_get_their_own_model_cache(tmp_path):
    narrow, wide = RandomLlama(name="tiny", hidden_size=64), RandomLlama(name="tiny", hidden_size=128)
    assert cache_folder_name(narrow) != cache_folder_name(wide)
    folders = [prepare_model_folder(spec, tmp_path) for spec in (narrow, wide, narrow)]
    assert folders[0] == folders[2] != folders[1]
    sizes = [json.loads((folder / "config.json").read_text())["hidden_size"] for folder in folders]
    assert sizes == [64, 128, 64]  # each folder holds the model its spec describes


@pytest.mark.parametrize("changes, message", [
    ({"calibration": {"n_samples": 4, "seq_len": 6000, "seeds": [0]}},
     r"calibration\.seq_len=6000 is longer than the context of model 'tiny' \(4096 tokens\); allowed: 1\.\.4096"),
    ({"evaluation": {"seq_len": 8192}}, r"evaluation\.seq_len=8192 .* allowed: 1\.\.4096"),
    ({"models": ["smollm2-135m"], "methods": [{"method": "gptq", "bits": 3, "group_size": 64}],
      "evaluation": {"seq_len": 9000, "max_tokens": 20000}}, r"'smollm2-135m' \(8192 tokens\)"),
    ({"evaluation": {"seq_len": 512, "kl_tokens": 100}},
     r"evaluation\.kl_tokens=100 .* allowed: 0 \(no KL\) or at least 512"),
    ({"evaluation": {"seq_len": 512, "max_tokens": 300}}, r"evaluation\.max_tokens=300 .* at least 512"),
])
def test_windows_longer_than_the_model_or_the_text_are_refused_at_load(changes, message):
    with pytest.raises(ValueError, match=message):
        _study(**changes)


def test_a_hub_or_local_models_context_is_checked_before_the_base_model_is_recorded(tiny_model_folder, tmp_path):
    folder = tmp_path / "short-context"
    shutil.copytree(tiny_model_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 128}))
    study = _study(models=[{"kind": "local", "name": "mine", "path": str(folder)}], evaluation={"seq_len": 256})
    root = tmp_path / "root"
    with pytest.raises(ValueError, match=r"evaluation\.seq_len=256 is longer than the context of model 'mine' "
                                         r"\(128 tokens\)"):
        steps.materialize_base_model(study, "mine", root)
    assert not steps.model_dir(root, "mine").exists()
    fits = _study(models=[{"kind": "local", "name": "mine", "path": str(folder)}], evaluation={"seq_len": 128})
    assert steps.materialize_base_model(fits, "mine", root)["model"] == "mine"


def _local_source(folder, **options):
    return parse_source_spec({"kind": "local", "label": "mine", "path": str(folder), **options})


def test_text_that_is_not_in_the_declared_encoding_is_refused_by_file(tmp_path):
    (tmp_path / "good.txt").write_text("A plain UTF-8 document, with an é.", encoding="utf-8")
    (tmp_path / "noise.txt").write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ValueError, match=r"noise\.txt' is not valid utf-8 text \(byte 0: .*`encoding`"):
        list(iter_local(_local_source(tmp_path)))
    (tmp_path / "noise.txt").unlink()
    assert list(iter_local(_local_source(tmp_path))) == [("good.txt", "A plain UTF-8 document, with an é.")]


def test_a_declared_encoding_is_used_and_binary_files_are_refused(tmp_path):
    (tmp_path / "old.txt").write_bytes("£5 and café".encode("cp1252"))
    assert list(iter_local(_local_source(tmp_path, encoding="cp1252"))) == [("old.txt", "£5 and café")]
    (tmp_path / "blob.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(ValueError, match=r"blob\.txt' holds NUL characters"):
        list(iter_local(_local_source(tmp_path, encoding="cp1252")))
    with pytest.raises(ValueError, match=r"unknown encoding 'utf-9'"):
        _local_source(tmp_path, encoding="utf-9")


def test_an_unknown_lm_eval_task_is_refused_at_load():
    assert _study(evaluation={"seq_len": 64, "tasks": [{"kind": "lm_eval", "name": "piqa"}]}).lm_eval_tasks
    with pytest.raises(ValueError, match=r"no task named 'piqaa'; the paper's tasks: \[.*'piqa'"):
        _study(evaluation={"seq_len": 64, "tasks": [{"kind": "lm_eval", "name": "piqaa"}]})


@pytest.mark.parametrize("changes, line", [
    ({"modles": []}, "- unknown key 'modles' in the study; allowed: ['calibration', 'compute', 'description', "
                     "'evaluation', 'methods', 'models', 'name', 'sources']"),
    ({"calibration": {"n_samples": 4, "seq_len": 64, "seeds": [0], "sampler": "x"}},
     "- unknown key 'sampler' in calibration; allowed: ['descriptors', 'heldout_fraction', 'n_samples', "
     "'sampler_seed', 'sampling', 'seeds', 'selection', 'seq_len']"),
    ({"evaluation": {"tasks": [{"kind": "lm_eval", "name": "piqa", "limit": 3}]}},
     "- unknown key 'limit' in evaluation.tasks[0].lm_eval; allowed: ['data_files', 'kind', 'name']"),
    ({"models": [{"kind": "random", "name": "tiny", "hidden": 3}]},
     "- unknown key 'hidden' in models.random; allowed: ['hidden_size', 'intermediate_size', 'kind', 'name', "
     "'num_attention_heads', 'num_hidden_layers', 'num_key_value_heads', 'seed']"),
])
def test_unknown_keys_are_listed_with_the_allowed_ones(changes, line, tmp_path):
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    with pytest.raises(StudyError) as error:
        load_study(str(path))
    message = str(error.value)
    assert line in message.splitlines() and "pydantic" not in message
