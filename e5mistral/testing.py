"""Tiny, random E5-mistral models for tests, demos and benchmarks: no download needed.

The tokenizer is a byte-level BPE trained in-process with `tokenizers` on a small bundled text,
with Mistral's special tokens (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2) and the EOS contract.
"""

from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .configuration_e5mistral import E5MistralConfig
from .modeling_e5mistral import E5MistralModel
from .tokenization import ensure_eos

__all__ = ["make_tiny_model", "make_tiny_model_folder", "make_tiny_tokenizer", "tiny_config"]


def _corpus_lines(extra_texts=()) -> list[str]:
    text = resources.files("e5mistral").joinpath("data/tokenizer_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()] + list(extra_texts)


def make_tiny_tokenizer(vocab_size: int = 1000, extra_texts=(), padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained locally, appending EOS (pad = eos, as in Mistral).

    Example:

    ```python
    >>> tok = make_tiny_tokenizer()
    >>> tok("hello")["input_ids"][-1] == tok.eos_token_id
    True
    ```
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus_lines(extra_texts), trainer=trainer)
    # Mistral's own tokenizer adds BOS only; ensure_eos below upgrades it to "<s> $A </s>".
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        padding_side=padding_side,
        model_max_length=512,
    )
    return ensure_eos(tokenizer)


def tiny_config(vocab_size: int = 1000, **overrides) -> E5MistralConfig:
    """A few-thousand-parameter Mistral shape: 2 layers, hidden 32, grouped-query attention."""
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        sliding_window=None,
    )
    kwargs.update(overrides)
    return E5MistralConfig(**kwargs)


def make_tiny_model(tokenizer=None, seed: int = 0, **config_overrides) -> E5MistralModel:
    """A random tiny :class:`E5MistralModel` sized to ``tokenizer`` (float32, eval mode).

    Example:

    ```python
    >>> tok = make_tiny_tokenizer(); model = make_tiny_model(tok)
    >>> model(**tok(["hi"], return_tensors="pt")).pooler_output.shape
    torch.Size([1, 32])
    ```
    """
    vocab_size = len(tokenizer) if tokenizer is not None else 1000
    torch.manual_seed(seed)
    model = E5MistralModel(tiny_config(vocab_size=vocab_size, **config_overrides))
    return model.eval()


def make_tiny_model_folder(path, seed: int = 0, **config_overrides) -> Path:
    """Save a tiny random model as a Hub-style folder (weights, code, tokenizer, ST files).

    Example:

    ```python
    >>> folder = make_tiny_model_folder("/tmp/tiny-e5")
    >>> AutoModel.from_pretrained(folder, trust_remote_code=True)
    ```
    """
    from .export import save_model_folder

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, seed=seed, **config_overrides)
    return save_model_folder(model, tokenizer, path)
