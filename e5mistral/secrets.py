"""Secrets: which token goes where, and how every message that might show one is cleaned.

Two kinds of token are in play. An LLM server's API key (``OPENAI_API_KEY``, or one given
explicitly) is sent to that server only. A Hugging Face token (``HF_TOKEN``, or the one saved by
``hf auth login``) is sent to Hugging Face hosts only: the Hub (uploads) and Inference Endpoints;
a third-party LLM server never sees it. Tokens travel only in an ``Authorization`` header, and
:func:`redact` cuts them out of every error detail, log record, card and command line that could
carry one (some servers echo the header back in their error text).

Example:
    >>> redact("401: invalid header 'Bearer sk-abcdef123456' for https://me:pw@host/v1")
    "401: invalid header 'Bearer ***' for https://***@host/v1"
    >>> public_url("http://me:pw@host:8000/v1")
    'http://host:8000/v1'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import urlparse, urlunparse

__all__ = ["TOKEN_ENV_VARS", "hub_token", "is_hf_host", "public_url", "redact", "token_from_env"]

TOKEN_ENV_VARS = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1\2***"),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),
)
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def _is_secret(value: str | None) -> bool:
    """Whether `value` is worth cutting out: not empty, not the keyless placeholder "EMPTY", 6+ characters."""
    return bool(value) and value != "EMPTY" and len(value) >= 6


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every token replaced by `***`: the given `secrets`, the tokens in the
    environment (OPENAI_API_KEY, HF_TOKEN, HUGGING_FACE_HUB_TOKEN), URL credentials, and
    anything shaped like a bearer, `hf_` or `sk-` token.

    Example:
        >>> redact("key hf_abcdefgh1234 sent to http://user:pw@host/v1")
        'key hf_*** sent to http://***@host/v1'
    """
    values = {v for v in secrets if _is_secret(v)}
    values |= {os.environ[n] for n in TOKEN_ENV_VARS if _is_secret(os.environ.get(n))}
    for value in sorted(values, key=len, reverse=True):  # longest first: a token may contain another
        text = text.replace(value, "***")
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def public_url(url: str) -> str:
    """The URL without user:password (what logs and records name an endpoint by).

    Example:
        >>> public_url("https://u:p@[::1]:8443/v1")
        'https://[::1]:8443/v1'
    """
    parts = urlparse(url)
    if parts.username is None and parts.password is None:
        return url
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    return urlunparse(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def is_hf_host(host: str) -> bool:
    """Whether `host` is Hugging Face's: huggingface.co, hf.co, or an Inference Endpoint (*.huggingface.cloud).

    Example:
        >>> is_hf_host("api-inference.huggingface.co"), is_hf_host("evil-huggingface.co")
        (True, False)
    """
    return host in ("hf.co", "huggingface.co") or host.endswith((".hf.co", ".huggingface.co", ".huggingface.cloud"))


def token_from_env(base_url: str | None = None) -> str:
    """The API token for the LLM server at `base_url`: `OPENAI_API_KEY`; else, for Hugging Face
    hosts only (:func:`is_hf_host`), `HF_TOKEN` or the token saved by `hf auth login`; else the
    placeholder "EMPTY" that keyless servers (vLLM, llama.cpp) accept. A Hub token is never sent
    to a third-party URL.

    Example:
        >>> os.environ.pop("OPENAI_API_KEY", None); os.environ.pop("HF_TOKEN", None)  # doctest: +SKIP
        >>> token_from_env("http://localhost:8000/v1")  # doctest: +SKIP
        'EMPTY'
    """
    if os.environ.get("OPENAI_API_KEY"):
        return os.environ["OPENAI_API_KEY"]
    if is_hf_host(urlparse(base_url or "").hostname or ""):
        from huggingface_hub import get_token  # HF_TOKEN, else the saved login

        return get_token() or "EMPTY"
    return "EMPTY"


def hub_token(token: str | None = None, *, saved: bool = True) -> str | None:
    """The token an upload to the Hub uses: `token`, else ``HF_TOKEN``, else (with `saved`) the
    one saved by ``hf auth login``; None when there is none. ``saved=False`` is what is handed to
    ``HfApi``, which looks the saved login up itself.

    Example:
        >>> hub_token("hf_abc")
        'hf_abc'
    """
    found = token or os.environ.get("HF_TOKEN") or None
    if found is None and saved:
        from huggingface_hub import get_token

        found = get_token() or None
    return found
