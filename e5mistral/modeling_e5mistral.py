"""E5-mistral: a decoder whose pooled, normalised last token is a text embedding.

Hub-bound file: copied next to the weights by ``save_pretrained`` and loaded with
``trust_remote_code=True`` where the ``e5mistral`` package is not installed, so it imports only
torch, transformers and its sibling ``configuration_e5mistral.py`` (and the standard library).

Each supported decoder family has one class, the family's own transformers model class with
:class:`E5EmbeddingMixin` in front (``E5Qwen2Model(E5EmbeddingMixin, Qwen2Model)``), so weights,
attention biases, q/k norms and Gemma's embedding scaling are exactly the family's.
:class:`E5MistralModel` is the Mistral one and the entry point for all: it builds, and loads,
the family its config names.

``save_pretrained`` also writes the Sentence-Transformers files, so every saved folder loads in
``SentenceTransformer(folder)`` with last-token pooling (or mean, as configured).
"""

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Gemma2Model, Gemma3TextModel, GemmaModel, LlamaModel, MistralModel, Qwen2Model, Qwen3Model
from transformers.utils import ModelOutput, logging

from .configuration_e5mistral import BACKBONE_CONFIG_CLASSES, E5MistralConfig, backbone_config_class, backbone_of

logger = logging.get_logger(__name__)

# The default Sentence-Transformers prompts: ``e5mistral.format_query(INSTRUCTIONS["web_search"], "")``
# for queries (the package's tests check the two agree), nothing for documents.
DEFAULT_PROMPTS = {"query": "Instruct: Given a web search query, find passages that answer it\nQuery: ", "document": ""}
DEFAULT_MAX_SEQ_LENGTH = 512


def sentence_transformers_files(
    hidden_size: int, max_seq_length: int, prompts: dict[str, str], pooling: str = "last_token", normalize: bool = True
) -> dict[str, dict | list]:
    """The Sentence-Transformers configuration files, as ``{relative path: JSON content}``.

    Transformer -> Pooling (``lasttoken`` or ``mean``) -> Normalize (when ``normalize``), with
    named ``prompts`` and cosine similarity.

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


def write_sentence_transformers_files(
    folder, config, max_seq_length: int | None = None, prompts: dict[str, str] | None = None
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
    files = sentence_transformers_files(config.hidden_size, max_seq_length, prompts, config.pooling, config.normalize)
    for rel, content in files.items():
        path = os.path.join(folder, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    if config.normalize:
        os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last attended token of each row, for any padding side.

    Example: ``[[1, 1, 1, 0], [0, 1, 1, 1]] -> [2, 3]``.
    """
    # attention_mask: (B, T); positions weighted by the mask peak at the last attended token.
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (attention_mask.long() * positions).argmax(dim=1)  # (B,)


def last_token_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last attended token of each row.

    Correct for right padding, left padding and rows of different lengths, because the index comes
    from the mask itself rather than from an assumed padding side.

    Args:
        last_hidden_state: `(batch, seq_len, hidden)` token states.
        attention_mask: `(batch, seq_len)`, 1 for real tokens and 0 for padding.

    Returns:
        `(batch, hidden)` pooled states.

    Example:

    ```python
    >>> h = torch.arange(8.).view(2, 2, 2)          # (B=2, T=2, H=2)
    >>> last_token_pool(h, torch.tensor([[1, 0], [1, 1]]))
    tensor([[0., 1.],
            [6., 7.]])
    ```
    """
    index = last_token_index(attention_mask)  # (B,)
    rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)  # (B,)
    return last_hidden_state[rows, index]  # (B, H)


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the attended token states: `(B, T, H), (B, T) -> (B, H)` (the paper's ablation)."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)  # (B, T, 1)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, H)


@dataclass
class E5MistralModelOutput(ModelOutput):
    """Output of [`E5MistralModel`].

    Args:
        last_hidden_state: `(batch, seq_len, hidden)` states of the last layer.
        pooler_output: `(batch, hidden)` the text embeddings (L2-normalised when
            `config.normalize`).
        hidden_states: per-layer states when `output_hidden_states=True`.
        attentions: per-layer attention weights when `output_attentions=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# Checkpoint keys an embedding model leaves out on purpose: a ForCausalLM checkpoint's `lm_head`
# (an embedding model has no vocabulary head) and old checkpoints' rotary `inv_freq` buffers
# (recomputed from the config, not weights). Every other key must land.
_DROPPABLE_PREFIXES = ("lm_head.",)
_DROPPABLE_SUFFIXES = ("rotary_emb.inv_freq",)
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
_LISTED_KEYS = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not all land in the model: some unexpected, missing or mis-shaped."""


def _as_e5_config(config):
    """An [`E5MistralConfig`] for ``config``; a plain family config (`Qwen2Config`, ...) is wrapped."""
    if config is None or isinstance(config, E5MistralConfig):
        return config
    return E5MistralConfig(**config.to_dict())  # its model_type selects the family


def _format_keys(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _LISTED_KEYS else "")


def _check_every_weight_landed(model, source, info: dict) -> None:
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


class E5EmbeddingMixin:
    """What turns a decoder family's own model class into an E5 embedding model.

    Mixed in before the family class (``class E5Qwen2Model(E5EmbeddingMixin, Qwen2Model)``), so the
    modules, weights names, attention and embedding scaling are exactly the family's; this adds the
    pooled, normalised ``pooler_output``, the EOS check, strict safetensors loading and the
    Sentence-Transformers files on save. See [`E5MistralModel`].
    """

    config_class = E5MistralConfig
    e5_backbone: str = ""  # the family (`E5MistralConfig.backbone`) of each concrete class
    # Dropped on purpose, without transformers' "UNEXPECTED" load report (see _DROPPABLE_PREFIXES).
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"rotary_emb\.inv_freq$"]

    def __new__(cls, config=None, *args, **kwargs):
        # E5MistralModel(config) builds the family the config names (AutoModel.from_config goes here too).
        config = _as_e5_config(config)
        if cls is E5MistralModel and config is not None and config.backbone != cls.e5_backbone:
            model = object.__new__(e5_model_class(config.backbone))
            model.__init__(config, *args, **kwargs)  # not an E5MistralModel, so Python would not call it
            return model
        return object.__new__(cls)

    def __init__(self, config, *args, **kwargs):
        config = _as_e5_config(config)
        if config.backbone != self.e5_backbone:
            raise ValueError(
                f"{type(self).__name__} is the {self.e5_backbone!r} family but config.backbone is "
                f"{config.backbone!r}; build the model with E5MistralModel(config), which picks "
                f"{e5_model_class(config.backbone).__name__}."
            )
        super().__init__(config, *args, **kwargs)
        self._warned_not_eos = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load like any transformers model, as the family the checkpoint is, from safetensors only.

        The family comes from the folder's config: an E5 folder's ``backbone``, or a plain
        checkpoint's ``model_type`` (a folder saved by ``Qwen2ForCausalLM.save_pretrained`` loads as
        an [`E5Qwen2Model`], its ``lm_head`` dropped). Every other weight must land: a checkpoint with
        a weight the model does not have, or without one the model needs, raises
        :class:`CheckpointMismatchError` naming them. Pickle checkpoints (``pytorch_model.bin``) are
        refused: unpickling can run arbitrary code.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError(
                "E5MistralModel.from_pretrained(use_safetensors=False): only safetensors weights are "
                "loaded, since pickle checkpoints can run arbitrary code. Drop the argument."
            )
        kwargs["use_safetensors"] = True
        config = kwargs.get("config")
        if config is None or isinstance(config, (str, os.PathLike)):
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config_dict, _ = E5MistralConfig.get_config_dict(config or pretrained_model_name_or_path, **hub_kwargs)
            backbone = backbone_of(config_dict)
        else:
            kwargs["config"] = config = _as_e5_config(config)
            backbone = config.backbone
        target = e5_model_class(backbone)
        if cls is not E5MistralModel and cls is not target:
            raise ValueError(
                f"{cls.__name__}.from_pretrained({str(pretrained_model_name_or_path)!r}): the checkpoint is a "
                f"{backbone!r} model; load it with E5MistralModel.from_pretrained (or {target.__name__})."
            )
        output_loading_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super(E5EmbeddingMixin, target).from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except OSError as err:
            if "safetensors" not in str(err):
                raise
            raise OSError(
                f"{pretrained_model_name_or_path} has no safetensors weights, and E5MistralModel refuses "
                "pickle checkpoints (pytorch_model.bin), which can run arbitrary code when loaded. Convert "
                "it once where you trust the file: load the state dict with torch.load(..., weights_only=True) "
                "and save it with safetensors.torch.save_file or model.save_pretrained(...)."
            ) from err
        _check_every_weight_landed(model, pretrained_model_name_or_path, info)
        return (model, info) if output_loading_info else model

    def save_pretrained(
        self,
        save_directory,
        is_main_process: bool = True,
        *args,
        max_seq_length: int | None = None,
        sentence_transformers_prompts: dict[str, str] | None = None,
        **kwargs,
    ):
        """Save like any transformers model, plus the Sentence-Transformers files.

        The folder then loads in ``SentenceTransformer(folder)`` with this model's pooling and
        normalisation (without those files Sentence-Transformers would silently mean-pool).

        Args:
            save_directory: the folder to write.
            is_main_process: as for `PreTrainedModel.save_pretrained`; other processes write nothing.
            max_seq_length: the Sentence-Transformers truncation length; defaults to 512 tokens, at
                most ``config.max_position_embeddings``.
            sentence_transformers_prompts: named prompts; defaults to :data:`DEFAULT_PROMPTS`.
            *args, **kwargs: as for `PreTrainedModel.save_pretrained`.

        Example:

        ```python
        >>> model.save_pretrained("out/my-e5"); tokenizer.save_pretrained("out/my-e5")
        >>> SentenceTransformer("out/my-e5", trust_remote_code=True).encode(["hello"], prompt_name="document")
        ```
        """
        if kwargs.get("push_to_hub"):
            raise ValueError(
                "E5MistralModel.save_pretrained(push_to_hub=True) would upload the folder without its "
                "Sentence-Transformers files; save without push_to_hub and upload the folder, or call "
                "model.push_to_hub(repo_id), which uploads them too."
            )
        result = super().save_pretrained(save_directory, is_main_process, *args, **kwargs)
        should_save = getattr(self, "should_save_on_this_rank", None)  # transformers 5: rank 0 only
        if should_save(is_main_process) if should_save is not None else is_main_process:
            write_sentence_transformers_files(
                save_directory, self.config, max_seq_length=max_seq_length, prompts=sentence_transformers_prompts
            )
        return result

    def pool(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool and (optionally) normalise: `(B, T, H), (B, T) -> (B, H)`."""
        if self.config.pooling == "mean":
            pooled = mean_pool(last_hidden_state, attention_mask)
        else:
            pooled = last_token_pool(last_hidden_state, attention_mask)
        if self.config.normalize:
            # Normalise in float32: a bf16 norm of a 4096-d vector loses precision.
            pooled = F.normalize(pooled.float(), p=2, dim=-1).to(pooled.dtype)
        return pooled

    def _check_pooled_eos(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        eos = self.config.eos_token_id
        if self._warned_not_eos or eos is None or self.config.pooling != "last_token":
            return
        eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=input_ids.device)
        pooled_ids = input_ids.gather(1, last_token_index(attention_mask)[:, None])  # (B, 1)
        bad = ~torch.isin(pooled_ids[:, 0], eos_ids)  # (B,)
        if bad.any():
            self._warned_not_eos = True
            row = int(bad.nonzero()[0, 0])
            logger.warning(
                f"E5MistralModel pooled token id {int(pooled_ids[row, 0])} in row {row}, not EOS "
                f"({eos}): the tokenizer did not append EOS, so the embedding is that of the last "
                "word. Fix the tokenizer with `e5mistral.ensure_eos(tokenizer)` (it appends EOS in "
                "the post-processor) or encode through `e5mistral.E5Embedder`."
            )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> E5MistralModelOutput:
        r"""Embed a batch.

        Args:
            input_ids: `(batch, seq_len)` token ids, each row ending with EOS.
            attention_mask: `(batch, seq_len)`; all ones when omitted (no padding).
            position_ids, inputs_embeds, **kwargs: as for the family's model (`MistralModel`, `Qwen2Model`, ...).

        Returns:
            [`E5MistralModelOutput`] with `pooler_output` of shape `(batch, hidden)`.
        """
        kwargs.pop("use_cache", None)  # an encoder never caches
        if attention_mask is not None and attention_mask.dim() == 2:
            empty = ~attention_mask.bool().any(dim=1)  # (B,)
            if empty.any():
                raise ValueError(
                    f"E5MistralModel: attention_mask row {int(empty.nonzero()[0, 0])} is all zeros, so there is "
                    "no token to pool; every text needs at least its EOS token (an empty string tokenizes to EOS)."
                )
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # (B, T, H)
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        if input_ids is not None:
            self._check_pooled_eos(input_ids, attention_mask)
        return E5MistralModelOutput(
            last_hidden_state=hidden,
            pooler_output=self.pool(hidden, attention_mask),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class E5MistralModel(E5EmbeddingMixin, MistralModel):
    r"""An E5 embedding model: a decoder backbone that returns one embedding per text.

    For a Mistral config this is a `MistralModel` (the published e5-mistral layout: weights named
    like `MistralModel`'s, no `model.` prefix, no `lm_head`; a `MistralForCausalLM` checkpoint loads
    too, its `lm_head` dropped). It is also the entry point for every other family:
    `E5MistralModel(config)` and `E5MistralModel.from_pretrained(folder)` build the class of the
    family the config names ([`E5LlamaModel`], [`E5Qwen2Model`], [`E5Qwen3Model`], [`E5GemmaModel`],
    [`E5Gemma2Model`], [`E5Gemma3TextModel`]: the family's own model class with this pooling), and a
    plain family checkpoint (`Qwen2ForCausalLM.save_pretrained`, `LlamaModel.save_pretrained`, ...)
    loads as its own family.

    Every input must end with EOS (the tokenizer's post-processor appends it, see
    `e5mistral.ensure_eos`): the embedding is the last layer's state at that EOS. When `input_ids`
    are given, a pooled token that is not EOS is reported once with a warning, since the
    embedding would then be that of the last word.

    Example:

    ```python
    >>> from transformers import AutoModel, AutoTokenizer
    >>> import e5mistral
    >>> model = AutoModel.from_pretrained("intfloat/e5-mistral-7b-instruct")  # or a local folder
    >>> tokenizer = AutoTokenizer.from_pretrained("intfloat/e5-mistral-7b-instruct")
    >>> batch = tokenizer([e5mistral.format_query("Given a question, retrieve passages that answer it",
    ...                                           "how tall is mont blanc"), "Mont Blanc is 4,806 m high."],
    ...                   padding=True, return_tensors="pt")
    >>> embeddings = model(**batch).pooler_output   # (2, hidden), unit norm
    >>> score = embeddings[0] @ embeddings[1]
    >>> qwen = e5mistral.E5MistralModel.from_pretrained("Qwen/Qwen2.5-0.5B")  # an E5Qwen2Model, biases kept
    ```
    """

    e5_backbone = "mistral"


class E5LlamaModel(E5EmbeddingMixin, LlamaModel):
    """A `LlamaModel` with E5 pooling (attention/MLP biases as its config says); see [`E5MistralModel`]."""

    e5_backbone = "llama"


class E5Qwen2Model(E5EmbeddingMixin, Qwen2Model):
    """A `Qwen2Model` (q/k/v projection biases) with E5 pooling; see [`E5MistralModel`]."""

    e5_backbone = "qwen2"


class E5Qwen3Model(E5EmbeddingMixin, Qwen3Model):
    """A `Qwen3Model` (q/k RMS norms) with E5 pooling; see [`E5MistralModel`]."""

    e5_backbone = "qwen3"


class E5GemmaModel(E5EmbeddingMixin, GemmaModel):
    """A `GemmaModel` (embeddings scaled by sqrt(hidden), (1 + w) norms) with E5 pooling; see [`E5MistralModel`]."""

    e5_backbone = "gemma"


class E5Gemma2Model(E5EmbeddingMixin, Gemma2Model):
    """A `Gemma2Model` (logit soft-capping, sliding/global layers) with E5 pooling; see [`E5MistralModel`]."""

    e5_backbone = "gemma2"


class E5Gemma3TextModel(E5EmbeddingMixin, Gemma3TextModel):
    """A `Gemma3TextModel` (q/k norms, local/global RoPE) with E5 pooling; see [`E5MistralModel`]."""

    e5_backbone = "gemma3_text"


E5_MODEL_CLASSES = {  # backbone -> its E5 model class; keep in step with BACKBONE_CONFIG_CLASSES
    cls.e5_backbone: cls
    for cls in (
        E5MistralModel,
        E5LlamaModel,
        E5Qwen2Model,
        E5Qwen3Model,
        E5GemmaModel,
        E5Gemma2Model,
        E5Gemma3TextModel,
    )
}
for _cls in E5_MODEL_CLASSES.values():
    # save_pretrained copies this file and its config sibling next to the weights, with an auto_map entry
    # naming the family class, so every family's folder loads with trust_remote_code=True.
    _cls.register_for_auto_class("AutoModel")


def e5_model_class(backbone: str) -> type:
    """The E5 model class of a ``backbone`` family (``"qwen2" -> E5Qwen2Model``); a clear error otherwise."""
    if backbone not in E5_MODEL_CLASSES:
        backbone_config_class(backbone)  # raises, listing the supported families
        raise ValueError(
            f"E5MistralModel: no model class for backbone {backbone!r}; supported: {', '.join(E5_MODEL_CLASSES)}."
        )
    return E5_MODEL_CLASSES[backbone]


__all__ = [
    "DEFAULT_PROMPTS",
    "E5_MODEL_CLASSES",
    "CheckpointMismatchError",
    "E5EmbeddingMixin",
    "E5Gemma2Model",
    "E5Gemma3TextModel",
    "E5GemmaModel",
    "E5LlamaModel",
    "E5MistralModel",
    "E5MistralModelOutput",
    "E5Qwen2Model",
    "E5Qwen3Model",
    "e5_model_class",
    "last_token_pool",
    "mean_pool",
    "sentence_transformers_files",
    "write_sentence_transformers_files",
]
