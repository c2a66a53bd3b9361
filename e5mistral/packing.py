"""Padding-free (packed) batches: every text of a batch in one row, no padding computed.

A right-padded batch ``{"input_ids": (B, T), "attention_mask": (B, T)}`` becomes the layout
transformers uses for padding-free training (``DataCollatorWithFlattening``): the real tokens of
all texts concatenated into ``input_ids`` of shape ``(1, N)``, ``position_ids`` restarting at 0
for each text, and the flash-attention keywords ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (the
texts' boundaries, ``(B + 1,)`` int32) and ``max_length_q`` / ``max_length_k``
(:func:`pack_features`). The model (:class:`~e5mistral.E5EmbeddingMixin`) pools one embedding
per text from the packed states, so the embeddings, the loss and the gradients are those of the
padded batch, with ``N`` = the real token count (padding share 0%).

Which attention runs a packed batch:

- ``flash_attention_2`` / ``flash_attention_3``: transformers' own variable-length path, which
  reads ``cu_seq_lens_*`` as is (GPU only, not run by this package's CPU tests).
- ``flex_attention``: transformers builds a block-diagonal ``BlockMask`` from ``position_ids``.
- ``sdpa`` and ``eager``: for the packed forward only, the model switches to
  :func:`varlen_sdpa_attention` (registered here as :data:`PACKED_ATTENTION`), which runs
  ``scaled_dot_product_attention`` on each text alone. Because the name has no mask function,
  transformers builds no mask at all, so no ``N x N`` mask over the packed row and no attention
  across texts is ever computed.

Refused (``ValueError``), since they could not be exact: a bidirectional model
(``config.bidirectional``), attention logit soft-capping under sdpa/eager (Gemma 2), and any
other attention implementation (:func:`check_packable`).

Example:

```python
>>> batch = tokenizer(["a short text", "a much longer text about rivers"], padding=True, return_tensors="pt")
>>> packed = pack_features(batch)                 # input_ids (1, N), N = batch["attention_mask"].sum()
>>> model(**packed).pooler_output                 # (2, H), the same as model(**batch).pooler_output
```
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface

# The model file names them (it is Hub-bound and cannot import this module): the implementations a packed
# batch can run with, and the name this module registers its attention function under.
from .modeling_e5mistral import PACKABLE_ATTENTION, PACKED_ATTENTION

__all__ = ["PACKABLE_ATTENTION", "PACKED_ATTENTION", "check_packable", "pack_features", "varlen_sdpa_attention"]


def pack_features(features: dict[str, Tensor]) -> dict[str, Tensor | int]:
    """The padding-free form of a padded batch: its real tokens in one row, with the texts' boundaries.

    Works for right or left padding (a row's attended tokens are taken in order). Keys other than
    ``input_ids`` and ``attention_mask`` are dropped.

    Args:
        features: ``{"input_ids": (B, T), "attention_mask": (B, T)}`` (no mask: no padding).

    Returns:
        ``input_ids`` and ``position_ids`` of shape ``(1, N)``, ``cu_seq_lens_q`` /
        ``cu_seq_lens_k`` (the same ``(B + 1,)`` int32 tensor of cumulative lengths) and
        ``max_length_q`` / ``max_length_k`` (the longest text, an int).

    Example:
        >>> packed = pack_features({"input_ids": torch.tensor([[5, 6, 2], [7, 2, 0]]),
        ...                         "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])})
        >>> packed["input_ids"].tolist(), packed["position_ids"].tolist(), packed["cu_seq_lens_q"].tolist()
        ([[5, 6, 2, 7, 2]], [[0, 1, 2, 0, 1]], [0, 3, 5])
    """
    input_ids = features["input_ids"]  # (B, T)
    mask = features.get("attention_mask")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()  # (B, T)
    lengths = mask.sum(dim=1)  # (B,)
    if not bool((lengths > 0).all()):
        row = int((lengths == 0).nonzero()[0, 0])
        raise ValueError(
            f"pack_features: attention_mask row {row} is all zeros, so there is no token to pool; every text needs "
            "at least its EOS token."
        )
    cu_seq_lens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)  # (B + 1,)
    starts = torch.repeat_interleave(cu_seq_lens[:-1].long(), lengths)  # (N,) each token's text start
    position_ids = torch.arange(int(cu_seq_lens[-1]), device=input_ids.device) - starts  # (N,)
    longest = int(lengths.max())
    return {
        "input_ids": input_ids[mask][None],  # (1, N), row-major: text after text
        "position_ids": position_ids[None],  # (1, N)
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def check_packable(config, what: str = "padding_free") -> None:
    """Raise a ``ValueError`` (what, the value, the fix) where a packed forward could not be exact.

    Example: ``check_packable(model.config)`` passes for a causal sdpa model and raises for
    ``bidirectional=True`` or a Gemma 2 model with soft-capping under sdpa/eager.
    """
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if implementation not in (*PACKABLE_ATTENTION, PACKED_ATTENTION):
        raise ValueError(
            f"{what}=True: attention implementation {implementation!r} is not known to handle packed texts; use one "
            f"of {', '.join(PACKABLE_ATTENTION)} (attn_implementation=...), or padding_free=False."
        )
    if getattr(config, "bidirectional", False):
        raise ValueError(
            f"{what}=True with bidirectional=True: packed texts are only kept apart by the causal per-text "
            "attention; train or encode a bidirectional model with padding_free=False."
        )
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap is not None and implementation in ("sdpa", "eager"):
        raise ValueError(
            f"{what}=True with attn_logit_softcapping={softcap} under {implementation!r}: the packed sdpa attention "
            "cannot soft-cap logits; use attn_implementation='flash_attention_2', or padding_free=False."
        )


def varlen_sdpa_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    cu_seq_lens_q: Tensor | None = None,
    cu_seq_lens_k: Tensor | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """Causal attention of each packed text on its own: ``(1, heads, N, d) -> (1, N, heads, d)``.

    The attention function of a packed batch under sdpa/eager (transformers' attention-function
    signature; the model selects it, see the module docstring). Each text ``[s, e)`` of
    ``cu_seq_lens_q`` runs one ``scaled_dot_product_attention(is_causal=True)`` with the layer's
    ``scaling`` and ``dropout``; grouped-query keys/values are repeated to the query heads. A text
    longer than ``sliding_window`` gets that text's own band mask (``0 <= i - j < window``, as
    transformers' sliding-window mask). No work or mask spans two texts. Returns no attention weights.

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 4)  # two texts of 3 and 2 tokens
        >>> cu = torch.tensor([0, 3, 5], dtype=torch.int32)
        >>> out, _ = varlen_sdpa_attention(torch.nn.Module(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
        >>> out.shape
        torch.Size([1, 5, 2, 4])
    """
    if softcap is not None:
        raise ValueError(
            f"padding_free: attention logit soft-capping ({softcap}) is not supported by the packed sdpa attention; "
            "use attn_implementation='flash_attention_2', or padding_free=False."
        )
    if cu_seq_lens_q is None or query.shape[0] != 1 or attention_mask is not None:
        raise ValueError(
            f"{PACKED_ATTENTION} runs packed batches only (one row, cu_seq_lens_q given, no attention mask), got "
            f"query {tuple(query.shape)}; pack the batch with e5mistral.packing.pack_features."
        )
    if cu_seq_lens_k is not None and not torch.equal(cu_seq_lens_k, cu_seq_lens_q):
        raise ValueError(f"{PACKED_ATTENTION}: cu_seq_lens_k must equal cu_seq_lens_q (self-attention, no cache).")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # (1, kv_heads, N, d) -> (1, heads, N, d)
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    # One split per tensor, not a slice per text: a slice's backward writes its gradient into a zeroed copy of
    # the whole packed tensor (texts x tokens work and memory per layer), a split's backward is one concatenation.
    lengths = torch.diff(cu_seq_lens_q).tolist()
    outputs = []
    for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2)):
        length, band = q.shape[2], None
        if sliding_window is not None and length > sliding_window:
            i = torch.arange(length, device=query.device)
            distance = i[:, None] - i[None, :]  # (L, L), this text only
            band = (distance >= 0) & (distance < sliding_window)
        outputs.append(
            F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=band,
                dropout_p=dropout,
                scale=scaling,
                is_causal=band is None,
            )
        )  # (1, heads, L, d)
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None  # (1, N, heads, d)


AttentionInterface.register(PACKED_ATTENTION, varlen_sdpa_attention)
