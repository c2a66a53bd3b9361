"""E5-mistral: a Mistral decoder whose pooled, normalised last token is a text embedding.

Hub-bound file: copied next to the weights by ``save_pretrained`` and loaded with
``trust_remote_code=True`` where the ``e5mistral`` package is not installed, so it imports only
torch, transformers and its sibling ``configuration_e5mistral.py``.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import MistralModel
from transformers.utils import ModelOutput, logging

from .configuration_e5mistral import E5MistralConfig

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


__all__ = ["E5MistralModel", "E5MistralModelOutput", "last_token_pool", "mean_pool"]
