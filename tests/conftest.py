"""The fixtures every test file shares: a saved tiny model, its tokenizer, the Hub-bound code files.

The rest of the kit (tiny models of every backbone, word lists, training rows, the loopback
OpenAI-compatible server, `assert_close`) is :mod:`e5mistral.testing`, which processes launched
outside pytest (``tests/distributed_cases.py``, the benchmarks) import too. A test that needs
another word list or row shape keeps its own, since its assertions depend on it.
"""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` (not installed) imports under a bare `pytest` too, as under `python -m pytest`
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A saved tiny E5-mistral folder (weights, code, tokenizer, Sentence-Transformers files)."""
    from e5mistral.testing import make_tiny_model_folder

    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny-e5"), seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny tokenizer (EOS appended), one per test module: tests may set its ``padding_side``."""
    from e5mistral.testing import make_tiny_tokenizer

    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def hub_code() -> tuple[str, ...]:
    """The Hub-bound code files every saved model folder carries (``auto_map`` and what they import)."""
    return ("configuration_e5mistral.py", "modeling_e5mistral.py", "modeling_e5mistral_folder.py")
