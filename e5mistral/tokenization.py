"""The EOS contract: every text the model embeds ends with the EOS token.

Last-token pooling reads the hidden state at the final attended position, so that position must
be EOS. Under transformers 5 the ``post_processor`` in ``tokenizer.json`` decides which special
tokens are added (``add_eos_token`` in ``tokenizer_config.json`` alone can be ignored), so the
contract lives there: :func:`ensure_eos` writes it, :func:`check_eos` verifies it, including that
truncation keeps the EOS.
"""

from tokenizers import processors

__all__ = ["EOSContractError", "appends_eos", "check_eos", "check_pad_token", "ensure_eos"]

_PROBE = "Embeddings end with an end-of-sequence token."


class EOSContractError(ValueError):
    """The tokenizer does not end every encoded text with EOS."""


def _encode(tokenizer, text: str, **kwargs) -> list[int]:
    return tokenizer(text, add_special_tokens=True, **kwargs)["input_ids"]


def appends_eos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` ends with ``tokenizer.eos_token_id``."""
    ids = _encode(tokenizer, _PROBE)
    return tokenizer.eos_token_id is not None and len(ids) > 0 and ids[-1] == tokenizer.eos_token_id


def ensure_eos(tokenizer):
    """Make a Mistral/Llama-style fast tokenizer append EOS to every text, in place.

    The backend post-processor becomes ``[<s>] $A </s>`` (BOS kept only if the tokenizer already
    added it), the private ``add_eos_token`` flag is set to agree with it, and a missing pad token
    becomes EOS (as in Mistral, where pad == eos). Calling it twice changes nothing.

    Returns:
        The same tokenizer, for chaining.

    Example:

    ```python
    >>> tok = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1")
    >>> ensure_eos(tok)("hello")["input_ids"][-1] == tok.eos_token_id
    True
    ```
    """
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise EOSContractError(
            f"{type(tokenizer).__name__} has no EOS token (eos_token={tokenizer.eos_token!r}); set "
            "one first, e.g. `tokenizer.eos_token = '</s>'`."
        )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise EOSContractError(
            f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; load it with "
            "AutoTokenizer.from_pretrained(...) so it has a tokenizer.json post-processor."
        )
    if appends_eos(tokenizer):
        with_eos = None
    else:
        # Does the tokenizer add BOS today? Keep that behaviour.
        ids = _encode(tokenizer, _PROBE)
        add_bos = tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
        single = f"{bos}:0 $A:0 {eos}:0" if add_bos else f"$A:0 {eos}:0"
        pair = f"{single} {bos}:1 $B:1 {eos}:1" if add_bos else f"{single} $B:1 {eos}:1"
        special = [(eos, tokenizer.eos_token_id)]
        if add_bos:
            special.insert(0, (bos, tokenizer.bos_token_id))
        backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
        with_eos = add_bos
    if with_eos is not None:
        # Keep the saved flags consistent with the post-processor: transformers 5 rebuilds the
        # post-processor from these flags when they appear in tokenizer_config.json.
        object.__setattr__(tokenizer, "_add_bos_token", with_eos)
        object.__setattr__(tokenizer, "_add_eos_token", True)
        tokenizer.init_kwargs["add_bos_token"] = with_eos
        tokenizer.init_kwargs["add_eos_token"] = True
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_eos(tokenizer)
    return tokenizer


def check_eos(tokenizer) -> None:
    """Raise :class:`EOSContractError` unless every encoded text ends with EOS, truncated or not.

    Example:

    ```python
    >>> check_eos(tokenizer)   # silent when the contract holds
    ```
    """
    name = type(tokenizer).__name__
    fix = "Fix: `e5mistral.ensure_eos(tokenizer)`, then save the tokenizer again."
    if tokenizer.eos_token_id is None:
        raise EOSContractError(f"{name} has no EOS token, so last-token pooling has nothing to read. {fix}")
    ids = _encode(tokenizer, _PROBE)
    if not ids or ids[-1] != tokenizer.eos_token_id:
        last = tokenizer.convert_ids_to_tokens(ids[-1]) if ids else None
        raise EOSContractError(
            f"{name} does not append EOS ({tokenizer.eos_token!r}, id {tokenizer.eos_token_id}): "
            f"{_PROBE!r} ends with {last!r}, so pooling would embed the last word instead of EOS. {fix}"
        )
    short = _encode(tokenizer, _PROBE * 20, truncation=True, max_length=4)
    if len(short) != 4 or short[-1] != tokenizer.eos_token_id:
        raise EOSContractError(
            f"{name} drops EOS when truncating (max_length=4 gave ids {short}). {fix}"
        )


def check_pad_token(tokenizer, who: str) -> None:
    """Raise ``ValueError`` unless ``tokenizer`` can pad a batch (``who`` names the caller in the message).

    Example:

    ```python
    >>> check_pad_token(tokenizer, "E5Collator")   # silent when a pad token is set
    ```
    """
    if tokenizer.pad_token is None or tokenizer.pad_token_id is None:
        raise ValueError(
            f"{who}: {type(tokenizer).__name__} has no pad token (pad_token={tokenizer.pad_token!r}), so texts of "
            "different lengths cannot share a batch. Fix: `tokenizer.pad_token = tokenizer.eos_token` (Mistral's "
            "choice; pooling reads the attention mask, so pad == eos is safe), or `e5mistral.ensure_eos(tokenizer)`, "
            "which sets it."
        )
