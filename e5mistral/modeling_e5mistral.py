"""E5-mistral: a Mistral decoder whose pooled, normalised last token is a text embedding.

Hub-bound file: copied next to the weights by ``save_pretrained`` and loaded with
``trust_remote_code=True`` where the ``e5mistral`` package is not installed, so it imports only
torch, transformers and its sibling ``configuration_e5mistral.py`` (and the standard library).

``E5MistralModel.save_pretrained`` also writes the Sentence-Transformers files, so every saved
folder loads in ``SentenceTransformer(folder)`` with last-token pooling (or mean, as configured).
"""

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import MistralModel
from transformers.utils import ModelOutput, logging

from .configuration_e5mistral import E5MistralConfig

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


class E5MistralModel(MistralModel):
    r"""Mistral backbone that returns one embedding per text.

    The weights are those of a plain `MistralModel` (the published e5-mistral layout: no `model.`
    prefix, no `lm_head`); a `MistralForCausalLM` checkpoint loads too, its `lm_head` dropped.

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
    ```
    """

    config_class = E5MistralConfig

    def __init__(self, config: E5MistralConfig):
        super().__init__(config)
        self._warned_not_eos = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load like any transformers model, from safetensors weights only.

        Pickle checkpoints (``pytorch_model.bin``) are refused: unpickling can run arbitrary code.
        A `MistralModel` or `MistralForCausalLM` checkpoint loads too (its `lm_head` dropped).
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError(
                "E5MistralModel.from_pretrained(use_safetensors=False): only safetensors weights are "
                "loaded, since pickle checkpoints can run arbitrary code. Drop the argument."
            )
        kwargs["use_safetensors"] = True
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except OSError as err:
            if "safetensors" not in str(err):
                raise
            raise OSError(
                f"{pretrained_model_name_or_path} has no safetensors weights, and E5MistralModel refuses "
                "pickle checkpoints (pytorch_model.bin), which can run arbitrary code when loaded. Convert "
                "it once where you trust the file: load the state dict with torch.load(..., weights_only=True) "
                "and save it with safetensors.torch.save_file or model.save_pretrained(...)."
            ) from err

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
            position_ids, inputs_embeds, **kwargs: as for `MistralModel`.

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


__all__ = [
    "DEFAULT_PROMPTS",
    "E5MistralModel",
    "E5MistralModelOutput",
    "last_token_pool",
    "mean_pool",
    "sentence_transformers_files",
    "write_sentence_transformers_files",
]
