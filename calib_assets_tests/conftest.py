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
