"""Save an embedding model as one folder that every loader reads.

The folder holds safetensors weights, the self-contained custom code (``auto_map``), the tokenizer
under the EOS contract, and the Sentence-Transformers files (Transformer -> last-token Pooling ->
Normalize, with ``query``/``document`` prompts). It is what ``scripts/push_to_hub.py`` uploads.
"""

from pathlib import Path

from .tokenization import check_eos, ensure_eos

__all__ = ["save_model_folder"]


def save_model_folder(
    model,
    tokenizer,
    out_dir,
    *,
    max_seq_length: int = 512,
    prompts: dict[str, str] | None = None,
    max_shard_size: str = "5GB",
    truncate_dim: int | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hub-ready embedding-model folder.

    Args:
        model: an :class:`~e5mistral.E5MistralModel` (merge a LoRA adapter first).
        tokenizer: its fast tokenizer; it is brought under the EOS contract before saving.
        out_dir: the folder to write (created if needed).
        max_seq_length: the Sentence-Transformers truncation length.
        prompts: named Sentence-Transformers prompts; defaults to a ``query`` prompt with a
            web-search instruction and an empty ``document`` prompt
            (:data:`e5mistral.modeling_e5mistral.DEFAULT_PROMPTS`).
        max_shard_size: passed to ``save_pretrained``.
        truncate_dim: the embedding size loaders keep (a Matryoshka-trained model's); written as
            ``truncate_dim`` in ``config_sentence_transformers.json``, which ``SentenceTransformer``
            and :meth:`E5Embedder.from_pretrained` read. None: the full size.

    Returns:
        The folder, as a ``Path``.

    Example:

    ```python
    >>> save_model_folder(model, tokenizer, "out/my-e5")
    >>> SentenceTransformer("out/my-e5", trust_remote_code=True).encode(["hello"], prompt_name="document")
    ```
    """
    from .configuration_e5mistral import E5MistralConfig

    if not isinstance(model.config, E5MistralConfig):
        raise TypeError(
            f"save_model_folder needs an E5MistralModel, got {type(model).__name__} with "
            f"{type(model.config).__name__}; load the checkpoint with E5MistralModel.from_pretrained(...) "
            "(and call merge_and_unload() on a peft model) first."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ensure_eos(tokenizer)
    check_eos(tokenizer)
    # E5MistralModel.save_pretrained writes the Sentence-Transformers files too (one implementation).
    model.save_pretrained(
        out,
        max_shard_size=max_shard_size,
        max_seq_length=max_seq_length,
        sentence_transformers_prompts=prompts,
        sentence_transformers_truncate_dim=truncate_dim,
    )
    tokenizer.save_pretrained(out)
    return out
