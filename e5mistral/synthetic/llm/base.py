"""What every chat backend of the generator shares: the result, the errors, the JSON modes.

A backend has ``name`` (the model, recorded in the log), ``async chat(messages, *, seed=None,
schema=None) -> ChatResult`` and ``async aclose()``. It raises :class:`LLMError` for a request
that failed for good (``reason`` like "http_500" or "timeout"), or :class:`FatalLLMError` for a
fault that stops the run: no retry can fix it (bad token, unknown model), or no endpoint can be
reached (:class:`EndpointsUnreachable`).

Example:
    >>> error = LLMError("timeout", "no answer in 300 s")
    >>> error.reason, str(error)
    ('timeout', 'timeout: no answer in 300 s')
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["JSON_MODES", "ChatResult", "EndpointsUnreachable", "FatalLLMError", "LLMError", "accepts_schema"]

JSON_MODES = ("schema", "auto", "on", "off")


@dataclass
class ChatResult:
    """One chat completion: the answer text, token counts from the response, who answered."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    endpoint: str = ""


class LLMError(RuntimeError):
    """A request that failed after all retries; `reason` is a stable tag for failure counts."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FatalLLMError(LLMError):
    """A fault that stops the run instead of being recorded (401/403/404): the request is left
    pending, so a rerun after the fix asks it again."""


class EndpointsUnreachable(FatalLLMError):
    """No endpoint answered a request through all its retries (connection refused or reset,
    connect timeout, 429/502/503). The run stops; its unanswered requests stay pending."""


def accepts_schema(backend: Any) -> bool:
    """Whether `backend.chat` takes the `schema=` keyword (a custom backend written before
    structured outputs may not; the pipeline then asks it without schemas).

    Example:
        >>> class Old:
        ...     async def chat(self, messages, *, seed=None): ...
        >>> class New:
        ...     async def chat(self, messages, *, seed=None, schema=None): ...
        >>> accepts_schema(Old()), accepts_schema(New())
        (False, True)
    """
    try:
        parameters = inspect.signature(backend.chat).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return "schema" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
