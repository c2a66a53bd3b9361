"""Save an embedding model as one folder that every loader reads.

The folder holds safetensors weights, the self-contained custom code (``auto_map``), the tokenizer
under the EOS contract, and the Sentence-Transformers files (Transformer -> last-token Pooling ->
Normalize, with ``query``/``document`` prompts). It is what ``scripts/push_to_hub.py`` uploads.
"""

import json
from pathlib import Path

from .instructions import INSTRUCTIONS, format_query
from .tokenization import check_eos, ensure_eos

__all__ = ["save_model_folder", "sentence_transformers_files"]

DEFAULT_QUERY_INSTRUCTION = INSTRUCTIONS["web_search"]


def sentence_transformers_files(
    hidden_size: int, max_seq_length: int, prompts: dict[str, str], pooling: str = "last_token", normalize: bool = True
) -> dict[str, dict | list]:
    """The Sentence-Transformers configuration files, as ``{relative path: JSON content}``."""
    st_pooling = {"last_token": "lasttoken", "mean": "mean"}[pooling]
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    return {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden_size,
            "pooling_mode": st_pooling,
            "include_prompt": True,
        },
        "config_sentence_transformers.json": {
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }


def save_model_folder(
    model,
    tokenizer,
    out_dir,
    *,
    max_seq_length: int = 512,
    prompts: dict[str, str] | None = None,
    max_shard_size: str = "5GB",
) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hub-ready embedding-model folder.

    Args:
        model: an :class:`~e5mistral.E5MistralModel` (merge a LoRA adapter first).
        tokenizer: its fast tokenizer; it is brought under the EOS contract before saving.
        out_dir: the folder to write (created if needed).
        max_seq_length: the Sentence-Transformers truncation length.
        prompts: named Sentence-Transformers prompts; defaults to a ``query`` prompt with a
            web-search instruction and an empty ``document`` prompt.
        max_shard_size: passed to ``save_pretrained``.

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
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    if prompts is None:
        prompts = {"query": format_query(DEFAULT_QUERY_INSTRUCTION, ""), "document": ""}
    files = sentence_transformers_files(
        model.config.hidden_size, max_seq_length, prompts, model.config.pooling, model.config.normalize
    )
    for rel, content in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if model.config.normalize:
        (out / "2_Normalize").mkdir(exist_ok=True)
    return out
