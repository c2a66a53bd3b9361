"""LLM backends for the generator: OpenAI-compatible endpoints and a local `transformers` model.

Modules: `base` (the result, the errors, the JSON modes: what every backend shares), `endpoints`
(:class:`EndpointPool`: servers over HTTP, retries, load sharing, structured outputs),
`local` (:class:`TransformersChatBackend`: batched `generate`), `grammar` (the local backend's
constrained decoding). Both backends return a :class:`ChatResult` and raise :class:`LLMError` or
:class:`FatalLLMError`; see `base`. Tokens and redaction: :mod:`e5mistral.secrets`.

Example:
    >>> from e5mistral.synthetic.llm import EndpointPool
    >>> pool = EndpointPool(["http://localhost:8000/v1"], model="mistral-7b-instruct")
    >>> pool.endpoints[0].chat_url
    'http://localhost:8000/v1/chat/completions'
"""

from __future__ import annotations

from .base import JSON_MODES, ChatResult, EndpointsUnreachable, FatalLLMError, LLMError, accepts_schema
from .endpoints import EndpointPool, chat_completions_url, retry_after_seconds
from .local import TransformersChatBackend

__all__ = [
    "JSON_MODES",
    "ChatResult",
    "EndpointPool",
    "EndpointsUnreachable",
    "FatalLLMError",
    "LLMError",
    "TransformersChatBackend",
    "accepts_schema",
    "chat_completions_url",
    "retry_after_seconds",
]
