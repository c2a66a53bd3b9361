"""Batched encoding of queries (with an instruction) and documents (without).

Texts are tokenized once, sorted by length and cut into batches of at most ``batch_size`` texts
where they save the most padding (:func:`~e5mistral.batching.plan_chunks`), run
through the model under ``torch.inference_mode``, and returned in input order, L2-normalised.
With ``padding_free=True`` each batch is packed into one row without padding
(:mod:`e5mistral.packing`), so batches are simply ``batch_size`` consecutive texts.
"""

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .batching import plan_chunks
from .instructions import format_query
from .modeling_e5mistral import E5MistralModel
from .packing import check_packable, pack_features
from .tokenization import check_eos, check_model_path, check_pad_token, clamp_max_length, load_tokenizer

__all__ = ["E5Embedder"]


def _check_texts(texts, what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, got a single str {texts[:40]!r}; wrap it in a list.")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(text).__name__} ({text!r}).")
    return texts


def _check_truncate_dim(truncate_dim, hidden: int) -> int | None:
    if truncate_dim is not None and (isinstance(truncate_dim, bool) or not 0 < int(truncate_dim) <= hidden):
        raise ValueError(
            f"E5Embedder: truncate_dim={truncate_dim} must be in 1..{hidden} (the embedding size), or None."
        )
    return truncate_dim


def _saved_truncate_dim(name_or_path, revision: str | None = None) -> int | None:
    """``truncate_dim`` of a folder's or Hub repository's ``config_sentence_transformers.json`` (None if absent)."""
    import json

    from transformers.utils import cached_file

    path = cached_file(
        str(name_or_path),
        "config_sentence_transformers.json",
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("truncate_dim")


class E5Embedder:
    """Encode texts with an E5-mistral model and its tokenizer.

    Args:
        model: an :class:`~e5mistral.E5MistralModel` (or anything whose output has
            ``pooler_output``, such as a peft-wrapped one).
        tokenizer: its tokenizer; it must append EOS (checked here, see :func:`e5mistral.ensure_eos`).
        max_length: truncation length in tokens, EOS included; capped (with a warning) at the
            model's ``max_position_embeddings``.
        batch_size: the most texts per forward pass (fewer where a batch would otherwise pad a lot).
        device: where to run; defaults to the model's device.
        truncate_dim: keep the first ``truncate_dim`` dimensions of every embedding, re-normalised
            (a Matryoshka-trained model, see ``matryoshka_dims``); None: the full size.
            :meth:`from_pretrained` takes it from the folder's ``config_sentence_transformers.json``
            (as ``SentenceTransformer`` does) unless given.
        padding_free: pack each batch into one row of real tokens (:func:`e5mistral.packing.pack_features`):
            the same embeddings with no compute on padding. Needs a causal model under sdpa, eager,
            flash_attention_2/3 or flex_attention (a clear ``ValueError`` otherwise).

    Example:

    ```python
    >>> embedder = E5Embedder.from_pretrained("out/my-e5")
    >>> q = embedder.encode_queries(["how tall is mont blanc"], instruction="web_search")
    >>> d = embedder.encode_documents(["Mont Blanc rises 4,806 m above sea level."])
    >>> (q @ d.T).item()     # cosine similarity
    >>> packed = E5Embedder.from_pretrained("out/my-e5", padding_free=True)  # same embeddings, no padding
    ```
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_length: int = 512,
        batch_size: int = 32,
        device=None,
        truncate_dim: int | None = None,
        padding_free: bool = False,
    ):
        check_eos(tokenizer)
        check_pad_token(tokenizer, "E5Embedder")
        if max_length < 2:
            raise ValueError(f"E5Embedder: max_length={max_length} leaves no room for a token and EOS; use >= 2.")
        if batch_size < 1:
            raise ValueError(f"E5Embedder: batch_size={batch_size} must be >= 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = clamp_max_length(max_length, getattr(model, "config", None), "E5Embedder max_length")
        self.batch_size = batch_size
        self.truncate_dim = _check_truncate_dim(truncate_dim, model.config.hidden_size)
        if padding_free:
            check_packable(model.config)
        self.padding_free = padding_free
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path,
        *,
        revision: str | None = None,
        device=None,
        dtype=None,
        trust_remote_code: bool = False,
        **kwargs,
    ):
        """Load model and tokenizer from a folder or Hub id; ``kwargs`` go to ``__init__``.

        An E5 folder loads as saved; a plain checkpoint of a supported family (``LlamaForCausalLM``,
        ``Qwen2Model``, ...) loads as that family's E5 model, so an untrained base model can be
        evaluated the same way.

        A folder that does not exist, or has no tokenizer, raises :class:`~e5mistral.errors.UserError`
        saying so (see :func:`e5mistral.tokenization.load_tokenizer`).
        """
        from transformers import AutoModel

        name_or_path = check_model_path(name_or_path)
        tokenizer = load_tokenizer(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
        if trust_remote_code:  # the folder's own code decides the class
            model = AutoModel.from_pretrained(name_or_path, revision=revision, dtype=dtype, trust_remote_code=True)
        else:  # an E5 folder, or a plain decoder checkpoint of any supported family (pooled the E5 way)
            model = E5MistralModel.from_pretrained(name_or_path, revision=revision, dtype=dtype)
        if device is not None:
            model = model.to(device)
        if "truncate_dim" not in kwargs:
            kwargs["truncate_dim"] = _saved_truncate_dim(name_or_path, revision)
        return cls(model.eval(), tokenizer, device=device, **kwargs)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        max_length: int | None = None,
        truncate_dim: int | None = None,
    ) -> torch.Tensor:
        """Embed ``texts`` as they are (no instruction added).

        Every item must be a ``str`` (``None`` or a number raises ``TypeError`` naming its index).
        An empty or whitespace-only string is embedded as it is (its tokens, then EOS), so corpora
        with empty documents keep their row order; a text over ``max_length`` tokens is truncated
        with its EOS kept. A ``max_length`` over the model's ``max_position_embeddings`` is capped
        at it, with a warning. ``truncate_dim`` (default: the embedder's) keeps the first
        dimensions, re-normalised when the model normalises.

        Returns:
            `(len(texts), hidden)` (or `(len(texts), truncate_dim)`) float32 CPU tensor, rows in input order.

        Example:
            >>> embedder.encode(["hello"], truncate_dim=256).shape   # doctest: +SKIP
            torch.Size([1, 256])
        """
        texts = _check_texts(texts, "texts")
        batch_size = batch_size or self.batch_size
        max_length = clamp_max_length(max_length or self.max_length, self.model.config, "max_length")
        hidden = self.model.config.hidden_size
        if not texts:
            return torch.empty(0, truncate_dim or self.truncate_dim or hidden)
        encoded = self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))  # longest first: OOM shows at once
        lengths = [len(encoded[i]) for i in order]
        # At most batch_size texts per forward (so never more memory than fixed batches), cut where the
        # padding saved outweighs one more forward (batch_size x longest / 32 positions).
        if self.padding_free:  # no padding to save: batch_size texts per forward
            batches = [range(i, min(i + batch_size, len(texts))) for i in range(0, len(texts), batch_size)]
        else:
            batches = plan_chunks(lengths, max_positions=batch_size * lengths[0], max_rows=batch_size)
        if show_progress_bar is None:
            show_progress_bar = len(texts) >= 8 * batch_size
        out = torch.empty(len(texts), hidden)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for rows in tqdm(batches, desc="Encoding", unit="batch", disable=not show_progress_bar):
                    idx = order[rows.start : rows.stop]
                    batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    if self.padding_free:
                        batch = pack_features(batch)
                    emb = self.model(**batch).pooler_output  # (b, H)
                    out[idx] = emb.float().cpu()
        finally:
            self.model.train(was_training)
        dim = _check_truncate_dim(truncate_dim, hidden) or self.truncate_dim
        if dim is not None and dim < hidden:
            out = out[:, :dim]  # (N, dim)
            if getattr(self.model.config, "normalize", True):
                out = torch.nn.functional.normalize(out, dim=-1)
        return out

    def encode_queries(self, queries: Sequence[str], instruction: str | None = None, **kwargs) -> torch.Tensor:
        """Embed queries as ``Instruct: {instruction}\\nQuery: {query}`` (an instruction name works too)."""
        queries = _check_texts(queries, "queries")
        return self.encode([format_query(instruction, q) for q in queries], **kwargs)

    def encode_documents(self, documents: Sequence[str], **kwargs) -> torch.Tensor:
        """Embed documents bare, with no instruction."""
        return self.encode(_check_texts(documents, "documents"), **kwargs)
