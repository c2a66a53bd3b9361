import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A saved tiny E5-mistral folder (weights, code, tokenizer, Sentence-Transformers files)."""
    from e5mistral.testing import make_tiny_model_folder

    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny-e5"), seed=0)
