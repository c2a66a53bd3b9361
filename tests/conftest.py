"""The test kit every test file shares: a saved tiny model, its tokenizer, word lists, training
rows and the loader of ``scripts/*.py``.

Fixtures here replace helpers once copied across test files; a test that needs another word list
or row shape keeps its own, since its assertions depend on it.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` (not installed) imports under a bare `pytest` too, as under `python -m pytest`
    sys.path.insert(0, str(REPO))

# Words the tiny tokenizer knows (they are in its training corpus), for texts that must not
# fall apart into characters.
WORDS = ("river", "mountain", "coffee", "engine", "violin", "planet", "garden", "castle", "tiger", "bridge")


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


@pytest.fixture(scope="session")
def words() -> tuple[str, ...]:
    """:data:`WORDS`: ten words the tiny tokenizer knows."""
    return WORDS


def make_training_rows(n: int, negatives: int = 1, task: str = "retrieval", words=WORDS) -> list[dict]:
    """``n`` rows of the README's training schema, word ``i % len(words)`` in row ``i``'s texts.

    Example: ``make_training_rows(2)[1]`` is ``{"query": "mountain 1", "positive": "about the
    mountain 1", "negatives": ["about the violin 2"], "instruction": "Find the passage", ...}``.
    """
    k = len(words)
    return [
        {
            "query": f"{words[i % k]} {i}",
            "positive": f"about the {words[i % k]} {i}",
            "negatives": [f"about the {words[(i + 3 + j) % k]} {i + 1 + j}" for j in range(negatives)],
            "instruction": "Find the passage",
            "task": task,
            "language": "en",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def training_rows():
    """:func:`make_training_rows`: ``training_rows(8, negatives=0)`` -> 8 rows without hard negatives."""
    return make_training_rows


def load_script_module(name: str):
    """``scripts/<name>.py`` imported as the module ``<name>_script`` (registered in ``sys.modules``,
    where dataclasses and pickling look their module up), without running its ``__main__`` block."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """:func:`load_script_module`: ``load_script("train").main([...])`` runs the training command in-process."""
    return load_script_module
