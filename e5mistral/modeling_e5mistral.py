"""E5-mistral: a decoder whose pooled, normalised last token is a text embedding.

Hub-bound file: copied next to the weights by ``save_pretrained`` and loaded with
``trust_remote_code=True`` where the ``e5mistral`` package is not installed, so it imports only
torch, transformers and its siblings ``configuration_e5mistral.py`` and ``modeling_e5mistral_folder.py``
(the Sentence-Transformers files and the strict checkpoint check), which transformers copies with it.

Each supported decoder family has one class, the family's own transformers model class with
:class:`E5EmbeddingMixin` in front (``E5Qwen2Model(E5EmbeddingMixin, Qwen2Model)``), so weights,
attention biases, q/k norms and Gemma's embedding scaling are exactly the family's.
:class:`E5MistralModel` is the Mistral one and the entry point for all: it builds, and loads,
the family its config names.

``save_pretrained`` also writes the Sentence-Transformers files, so every saved folder loads in
``SentenceTransformer(folder)`` with last-token pooling (or mean, as configured).
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Gemma2Model, Gemma3TextModel, GemmaModel, LlamaModel, MistralModel, Qwen2Model, Qwen3Model
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_e5mistral import E5MistralConfig, backbone_config_class, backbone_of, check_attention_direction
from .modeling_e5mistral_folder import (
    DEFAULT_PROMPTS,
    CheckpointMismatchError,
    check_every_weight_landed,
    sentence_transformers_files,
    write_sentence_transformers_files,
)

logger = logging.get_logger(__name__)


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


# Packed (padding-free) batches, made by e5mistral.packing.pack_features: all texts in one row, position_ids
# restarting per text, cu_seq_lens_q marking them. flash/flex attention read them as they are; under sdpa/eager
# the forward switches to PACKED_ATTENTION, e5mistral.packing's per-text sdpa, which needs no mask.
PACKED_ATTENTION = "e5_varlen_sdpa"
PACKABLE_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def _switch_to_packed_attention(config, attention_mask, position_ids) -> str | None:
    """Set the attention a packed forward runs with; return the implementation to restore after it.

    A ``ValueError`` where a packed forward would not be exact (see e5mistral.packing).
    """
    implementation = config._attn_implementation or "sdpa"
    if attention_mask is not None or position_ids is None or position_ids.shape[0] != 1 or config.bidirectional:
        raise ValueError(
            "E5MistralModel: a packed batch (cu_seq_lens_q given) needs one row with position_ids, no attention_mask "
            f"and a causal model (bidirectional={config.bidirectional}); build it with e5mistral.packing.pack_features."
        )
    if implementation in ("sdpa", "eager") and PACKED_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(f"E5MistralModel: a packed batch under {implementation!r} needs `import e5mistral.packing`.")
    if implementation not in (*PACKABLE_ATTENTION, PACKED_ATTENTION):
        raise ValueError(f"E5MistralModel: packed batches need one of {PACKABLE_ATTENTION}, not {implementation!r}.")
    previous = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION if implementation in ("sdpa", "eager") else implementation
    return previous


_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
def _as_e5_config(config):
    """An [`E5MistralConfig`] for ``config``; a plain family config (`Qwen2Config`, ...) is wrapped."""
    if config is None or isinstance(config, E5MistralConfig):
        return config
    return E5MistralConfig(**config.to_dict())  # its model_type selects the family


class E5EmbeddingMixin:
    """What turns a decoder family's own model class into an E5 embedding model.

    Mixed in before the family class (``class E5Qwen2Model(E5EmbeddingMixin, Qwen2Model)``), so the
    modules, weights names, attention and embedding scaling are exactly the family's; this adds the
    pooled, normalised ``pooler_output``, the EOS check, strict safetensors loading and the
    Sentence-Transformers files on save. See [`E5MistralModel`].
    """

    config_class = E5MistralConfig
    e5_backbone: str = ""  # the family (`E5MistralConfig.backbone`) of each concrete class
    # Dropped on purpose, without transformers' "UNEXPECTED" load report (see check_every_weight_landed).
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
        check_attention_direction(self.config)

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
        check_every_weight_landed(model, pretrained_model_name_or_path, info)
        return (model, info) if output_loading_info else model

    def save_pretrained(
        self,
        save_directory,
        is_main_process: bool = True,
        *args,
        max_seq_length: int | None = None,
        sentence_transformers_prompts: dict[str, str] | None = None,
        sentence_transformers_truncate_dim: int | None = None,
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
            sentence_transformers_truncate_dim: written as ``truncate_dim`` (Matryoshka); None: full size.
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
                save_directory,
                self.config,
                max_seq_length=max_seq_length,
                prompts=sentence_transformers_prompts,
                truncate_dim=sentence_transformers_truncate_dim,
            )
        return result

    def pool(
        self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, cu_seq_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pool and (optionally) normalise: `(B, T, H), (B, T) -> (B, H)`.

        A packed batch (`cu_seq_lens` given, `(B + 1,)` text boundaries): `(1, N, H) -> (B, H)`, the
        state at each text's last token, or each text's mean.
        """
        if cu_seq_lens is not None:
            lengths = cu_seq_lens.diff().long()  # (B,)
            if self.config.pooling == "mean":
                text = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)  # (N,)
                sums = last_hidden_state.new_zeros(len(lengths), last_hidden_state.shape[-1])
                pooled = sums.index_add(0, text, last_hidden_state[0]) / lengths[:, None]  # (B, H)
            else:
                pooled = last_hidden_state[0, cu_seq_lens[1:].long() - 1]  # (B, H)
        elif self.config.pooling == "mean":
            pooled = mean_pool(last_hidden_state, attention_mask)
        else:
            pooled = last_token_pool(last_hidden_state, attention_mask)
        if self.config.normalize:
            # Normalise in float32: a bf16 norm of a 4096-d vector loses precision.
            pooled = F.normalize(pooled.float(), p=2, dim=-1).to(pooled.dtype)
        return pooled

    def _check_pooled_eos(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cu_seq_lens=None) -> None:
        eos = self.config.eos_token_id
        if self._warned_not_eos or eos is None or self.config.pooling != "last_token":
            return
        eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=input_ids.device)
        if cu_seq_lens is not None:  # packed: each text's last token
            pooled_ids = input_ids[0, cu_seq_lens[1:].long() - 1][:, None]  # (B, 1)
        else:
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
                A packed batch (`e5mistral.packing.pack_features`: `input_ids` `(1, N)`, `position_ids`
                restarting per text, `cu_seq_lens_q`/`cu_seq_lens_k`, `max_length_q`/`max_length_k`) gives
                one embedding per text, as its padded batch would.

        Returns:
            [`E5MistralModelOutput`] with `pooler_output` of shape `(batch, hidden)` (`(texts, hidden)` when packed).
        """
        kwargs.pop("use_cache", None)  # an encoder never caches
        if self.config.bidirectional:
            # transformers 5 builds the bidirectional mask (padding still masked) and tells the attention
            # calls is_causal=False; checked again here as the implementation may have changed since __init__.
            check_attention_direction(self.config)
            kwargs["is_causal"] = False
        if attention_mask is not None and attention_mask.dim() == 2:
            empty = ~attention_mask.bool().any(dim=1)  # (B,)
            if empty.any():
                raise ValueError(
                    f"E5MistralModel: attention_mask row {int(empty.nonzero()[0, 0])} is all zeros, so there is "
                    "no token to pool; every text needs at least its EOS token (an empty string tokenizes to EOS)."
                )
        cu_seq_lens = kwargs.get("cu_seq_lens_q")  # a packed batch (e5mistral.packing)
        # Only a packed forward switches the attention (and restores it after); a padded one leaves the config alone.
        restore = _switch_to_packed_attention(self.config, attention_mask, position_ids) if cu_seq_lens is not None else None
        try:
            outputs = super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                use_cache=False,
                **kwargs,
            )
        finally:
            if cu_seq_lens is not None:
                self.config._attn_implementation = restore
        hidden = outputs.last_hidden_state  # (B, T, H); packed: (1, N, H)
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        if input_ids is not None:
            self._check_pooled_eos(input_ids, attention_mask, cu_seq_lens)
        return E5MistralModelOutput(
            last_hidden_state=hidden,
            pooler_output=self.pool(hidden, attention_mask, cu_seq_lens),
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
    "PACKABLE_ATTENTION",
    "PACKED_ATTENTION",
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
