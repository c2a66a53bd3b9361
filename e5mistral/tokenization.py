"""The EOS contract: every text the model embeds ends with the EOS token.

Last-token pooling reads the hidden state at the final attended position, so that position must
be EOS. Under transformers 5 the ``post_processor`` in ``tokenizer.json`` decides which special
tokens are added (``add_eos_token`` in ``tokenizer_config.json`` alone can be ignored), so the
contract lives there: :func:`ensure_eos` writes it, :func:`check_eos` verifies it, including that
truncation keeps the EOS.

Also the loading and length checks every entry point shares: :func:`load_tokenizer`,
:func:`check_model_path` and :func:`clamp_max_length`.
"""

import logging
import os
import re

from tokenizers import processors

from .errors import UserError

__all__ = [
    "EOSContractError",
    "appends_eos",
    "check_eos",
    "check_model_path",
    "check_pad_token",
    "clamp_max_length",
    "ensure_eos",
    "load_tokenizer",
]

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
# What the Hub accepts as a repo id: "name" or "owner/name" (letters, digits, "-", "_", ".").
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")

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


def check_model_path(name_or_path, what: str = "model") -> str:
    """Return ``name_or_path`` as a str if it is an existing folder or reads as a Hub id.

    A path that does not exist and cannot be a Hub id (``./x``, ``/abs/x``, ``~/x``, ``a/b/c``)
    raises :class:`~e5mistral.errors.UserError` ``model folder ./x does not exist`` instead of the
    Hub client's "Repo id must be in the form ..."; a file where a folder is expected raises too.
    ``what`` names the argument in the message.

    Example:

    ```python
    >>> check_model_path("intfloat/e5-mistral-7b-instruct")
    'intfloat/e5-mistral-7b-instruct'
    >>> check_model_path("./no-such-folder")
    Traceback (most recent call last):
    ...
    e5mistral.errors.UserError: model folder ./no-such-folder does not exist; ...
    ```
    """
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise UserError(f"{what} {path} is a file, not a folder; pass the folder that holds config.json.")
    if not _HUB_ID.fullmatch(path):
        raise UserError(
            f"{what} folder {path} does not exist; check the path (relative to {os.getcwd()}) or pass a "
            "Hub id such as 'intfloat/e5-mistral-7b-instruct'."
        )
    return path


def load_tokenizer(name_or_path, revision: str | None = None, **kwargs):
    """``AutoTokenizer.from_pretrained`` with clear errors for a missing folder or tokenizer.

    A local folder must hold a tokenizer (``tokenizer.json``, ``tokenizer.model`` or
    ``tokenizer_config.json``); otherwise a :class:`~e5mistral.errors.UserError` names the folder
    and the fix, instead of transformers' misleading "install sentencepiece or tiktoken".
    ``kwargs`` (e.g. ``trust_remote_code``) go to ``AutoTokenizer.from_pretrained``.

    Example:

    ```python
    >>> tokenizer = load_tokenizer("out/my-e5")
    >>> load_tokenizer("out/weights-only")
    Traceback (most recent call last):
    ...
    e5mistral.errors.UserError: model folder out/weights-only has no tokenizer (...); ...
    ```
    """
    from transformers import AutoTokenizer

    path = check_model_path(name_or_path)
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise UserError(
            f"model folder {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save it there with "
            "tokenizer.save_pretrained(folder), or load the base model's tokenizer instead."
        )
    return AutoTokenizer.from_pretrained(path, revision=revision, **kwargs)


def clamp_max_length(value: int, limit, name: str = "max_length") -> int:
    """``value``, or the model's position limit when ``value`` is larger (with a warning).

    ``limit`` is an int, a model config with ``max_position_embeddings``, a model (its
    ``config``), or ``None`` (no limit known: ``value`` is returned). Texts longer than the model
    has positions for are meaningless to it, and a too-large length lets long documents exhaust
    memory, so the length used is capped; ``name`` names the setting in the warning.

    Example:

    ```python
    >>> clamp_max_length(100_000, 1024, "passage_max_length")   # logs a warning
    1024
    >>> clamp_max_length(512, model.config)
    512
    ```
    """
    if limit is not None and not isinstance(limit, int):
        config = getattr(limit, "config", limit)
        limit = getattr(config, "max_position_embeddings", None)
    if limit is None or value <= limit:
        return value
    logger.warning(
        "%s=%d is larger than the model's max_position_embeddings=%d; using %d.", name, value, limit, limit
    )
    return limit
