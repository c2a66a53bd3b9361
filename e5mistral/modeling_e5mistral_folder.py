"""The saved folder around an E5 model's weights: the Sentence-Transformers files it gets and the
check that a checkpoint's weights all land.

Hub-bound file, a sibling of ``modeling_e5mistral.py``: ``save_pretrained`` copies it next to the
weights too (transformers copies the files a remote-code module imports relatively), so it imports
only the standard library and ``configuration_e5mistral.py``.
"""

import json
import os

from .configuration_e5mistral import BACKBONE_CONFIG_CLASSES

# The default Sentence-Transformers prompts: ``e5mistral.format_query(INSTRUCTIONS["web_search"], "")``
# for queries (the package's tests check the two agree), nothing for documents.
DEFAULT_PROMPTS = {"query": "Instruct: Given a web search query, find passages that answer it\nQuery: ", "document": ""}
DEFAULT_MAX_SEQ_LENGTH = 512


def sentence_transformers_files(
    hidden_size: int,
    max_seq_length: int,
    prompts: dict[str, str],
    pooling: str = "last_token",
    normalize: bool = True,
    truncate_dim: int | None = None,
) -> dict[str, dict | list]:
    """The Sentence-Transformers configuration files, as ``{relative path: JSON content}``.

    Transformer -> Pooling (``lasttoken`` or ``mean``) -> Normalize (when ``normalize``), with
    named ``prompts`` and cosine similarity. ``truncate_dim`` (a Matryoshka-trained model's
    embedding size) goes into ``config_sentence_transformers.json``, which ``SentenceTransformer``
    reads: it keeps the first ``truncate_dim`` dimensions (cosine similarity re-normalises them).

    Example:

    ```python
    >>> files = sentence_transformers_files(4096, 512, DEFAULT_PROMPTS)
    >>> files["1_Pooling/config.json"]["pooling_mode"]
    'lasttoken'
    ```
    """
    st_pooling = {"last_token": "lasttoken", "mean": "mean"}[pooling]
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    st_config = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    if truncate_dim is not None:
        if not 0 < truncate_dim <= hidden_size:
            raise ValueError(f"truncate_dim={truncate_dim} must be in 1..{hidden_size} (the embedding size).")
        st_config["truncate_dim"] = truncate_dim
    return {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden_size,
            "pooling_mode": st_pooling,
            "include_prompt": True,
        },
        "config_sentence_transformers.json": st_config,
    }


def write_sentence_transformers_files(
    folder, config, max_seq_length: int | None = None, prompts: dict[str, str] | None = None, truncate_dim=None
) -> None:
    """Write :func:`sentence_transformers_files` for a model with ``config`` into ``folder``.

    ``max_seq_length`` defaults to 512 tokens, at most ``config.max_position_embeddings``;
    ``prompts`` to :data:`DEFAULT_PROMPTS`.

    Example:

    ```python
    >>> write_sentence_transformers_files("out/my-e5", model.config, max_seq_length=256)
    ```
    """
    if max_seq_length is None:
        limit = getattr(config, "max_position_embeddings", None)
        max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, limit) if limit else DEFAULT_MAX_SEQ_LENGTH
    prompts = dict(DEFAULT_PROMPTS if prompts is None else prompts)
    files = sentence_transformers_files(
        config.hidden_size, max_seq_length, prompts, config.pooling, config.normalize, truncate_dim
    )
    for rel, content in files.items():
        path = os.path.join(folder, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    if config.normalize:
        os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)


# Checkpoint keys an embedding model leaves out on purpose: a ForCausalLM checkpoint's `lm_head`
# (an embedding model has no vocabulary head) and old checkpoints' rotary `inv_freq` buffers
# (recomputed from the config, not weights). Every other key must land.
_DROPPABLE_PREFIXES = ("lm_head.",)
_DROPPABLE_SUFFIXES = ("rotary_emb.inv_freq",)
_LISTED_KEYS = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not all land in the model: some unexpected, missing or mis-shaped."""


def _format_keys(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _LISTED_KEYS else "")


def check_every_weight_landed(model, source, info: dict) -> None:
    """Raise :class:`CheckpointMismatchError` unless every backbone weight came from the checkpoint."""
    unexpected = [
        key
        for key in info.get("unexpected_keys") or ()
        if not key.startswith(_DROPPABLE_PREFIXES) and not key.endswith(_DROPPABLE_SUFFIXES)
    ]
    missing = list(info.get("missing_keys") or ())
    mismatched = [
        f"{key} (checkpoint {tuple(old)}, model {tuple(new)})" for key, old, new in info.get("mismatched_keys") or ()
    ]
    if not (unexpected or missing or mismatched):
        return
    family = type(model).__bases__[-1].__name__  # E5Qwen2Model(E5EmbeddingMixin, Qwen2Model)
    lines = [
        f"E5MistralModel.from_pretrained({str(source)!r}): the checkpoint's weights do not fit the "
        f"{model.config.backbone!r} model its config describes ({type(model).__name__}, a {family}), so it "
        "is refused rather than loaded with weights dropped or left random."
    ]
    if unexpected:
        lines.append(f"  in the checkpoint, not in the model (would be dropped): {_format_keys(unexpected)}")
    if missing:
        lines.append(f"  in the model, not in the checkpoint (would stay random): {_format_keys(missing)}")
    if mismatched:
        lines.append(f"  of another shape in the checkpoint (would stay random): {_format_keys(mismatched)}")
    lines.append(
        "Check that config.json names the checkpoint's real family in `model_type` (or `backbone` for an E5 "
        f"folder: one of {', '.join(BACKBONE_CONFIG_CLASSES)}; a Qwen2 checkpoint is 'qwen2', not 'mistral') and "
        "that its other fields (attention_bias, head_dim, num_hidden_layers, ...) match the weights, then load "
        "again. A checkpoint with extra modules (a classifier head, an adapter) needs them removed first."
    )
    raise CheckpointMismatchError("\n".join(lines))


__all__ = [
    "DEFAULT_MAX_SEQ_LENGTH",
    "DEFAULT_PROMPTS",
    "CheckpointMismatchError",
    "check_every_weight_landed",
    "sentence_transformers_files",
    "write_sentence_transformers_files",
]
