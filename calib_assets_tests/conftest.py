import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_model_folder(tmp_path_factory):
    """A tiny random Llama with the byte-level tokenizer, saved as a Hugging Face folder."""
    from calib_assets.models import RandomLlama, prepare_model_folder

    return prepare_model_folder(RandomLlama(name="tiny"), tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def materialized(tmp_path_factory):
    """The CI study (studies/ci.yaml) materialized end to end in a temporary Dagster instance, once per
    session: (study, definitions, artifact root, instance, the runner's progress lines). Tests that use it
    carry the marker xdist_group("pipeline"), so that under `--dist loadgroup` one worker runs them all."""
    import dagster as dg

    from calib_assets.defs import build_definitions
    from calib_assets.runner import run_study
    from calib_assets.study import load_study

    root = tmp_path_factory.mktemp("artifacts")
    study = load_study("ci")
    defs = build_definitions(study, root=str(root))
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        run_study(defs, study, instance, echo=lines.append)
        yield study, defs, root, instance, lines
