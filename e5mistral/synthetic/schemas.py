"""JSON schemas of the LLM's answers, one per task kind and step, for structured outputs.

Step 1 (brainstorm, the four asymmetric kinds) answers `{"tasks": [str, ...]}`; step 2 (example)
answers an object of the kind's string fields (`builder.OUTPUT_FIELDS`: e.g. sts and bitext
`{"S1", "S2", "S3"}`, long_short `{"input_text", "label", "misleading_label"}`). Every field is
required and no other key is allowed, so an answer that fits the schema passes the validators in
`tasks` except for their cross-field checks (a label equal to the misleading one, two identical
texts), which no JSON schema can state.

Each :class:`AnswerSchema` comes in two forms:

- `schema`: the portable form sent to servers (`response_format` `json_schema` with
  `"strict": true`): types, `required`, `additionalProperties: false` only, the subset that
  OpenAI's strict mode, vLLM, TGI and llama.cpp all accept.
- `bounded`: the same plus lengths, enforced by the local backend while decoding: every string
  starts with a non-space character (`pattern`; so it is non-empty after `strip()`, as the
  validators want) and has at most `FIELD_MAX_CHARS` characters; the task list holds 1 to
  `n_tasks` items. The upper bounds make every answer finite, whatever the model: decoding
  cannot run on in one endless string.

Example:
    >>> s = answer_schema("sts", "example")
    >>> s.name, s.schema["required"], s.schema["additionalProperties"]
    ('e5mistral_sts_example', ['S1', 'S2', 'S3'], False)
    >>> s.response_format()["json_schema"]["strict"]
    True
    >>> s.bounded["properties"]["S1"]["maxLength"], s.bounded["properties"]["S1"]["pattern"]
    (2000, '^\\\\S')
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .builder import KINDS, OUTPUT_FIELDS

__all__ = [
    "DEFAULT_MAX_TASKS",
    "FIELD_MAX_CHARS",
    "STEPS",
    "TASK_MAX_CHARS",
    "AnswerSchema",
    "answer_schema",
]

STEPS: tuple[str, ...] = ("brainstorm", "example")
_BRAINSTORM_KINDS = ("short_long", "long_short", "short_short", "long_long")  # as tasks.BRAINSTORM_KINDS

# Upper bounds (characters) on each string field, for local decoding: generous for what the
# prompts ask (documents of up to 500 words, about 3,500 characters; labels of a few words).
FIELD_MAX_CHARS: dict[str, dict[str, int]] = {
    "short_long": {"user_query": 500, "positive_document": 8000, "hard_negative_document": 8000},
    "long_short": {"input_text": 6000, "label": 200, "misleading_label": 200},
    "short_short": {"input": 600, "positive_document": 600},
    "long_long": {"input": 8000, "positive_document": 8000},
    "sts": {"S1": 2000, "S2": 2000, "S3": 2000},
    "bitext": {"S1": 1000, "S2": 1000, "S3": 1000},
}
TASK_MAX_CHARS = 400  # one brainstormed task definition (one sentence)
DEFAULT_MAX_TASKS = 50  # the task list's bound when the request's n_tasks is not given
_NON_BLANK = r"^\S"  # JSON Schema patterns are searches: the string's first character is not a space


@dataclass(frozen=True)
class AnswerSchema:
    """The JSON schema of one kind's answer at one step (see the module docstring).

    Attributes:
        name: `e5mistral_{kind}_{step}`, the `json_schema.name` sent to servers.
        schema: the portable strict schema.
        bounded: `schema` plus lengths, for constrained decoding.
    """

    name: str
    schema: dict[str, Any] = field(repr=False)
    bounded: dict[str, Any] = field(repr=False)

    def response_format(self) -> dict[str, Any]:
        """The OpenAI `response_format` asking for this schema.

        Example:
            >>> answer_schema("bitext", "example").response_format()["type"]
            'json_schema'
        """
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema, "strict": True}}

    def capped(self, max_chars: int | None) -> dict[str, Any]:
        """`bounded` with every string's `maxLength` at most `max_chars` (None: unchanged).

        Example:
            >>> answer_schema("sts", "example").capped(24)["properties"]["S2"]["maxLength"]
            24
        """
        if max_chars is None:
            return self.bounded
        if max_chars < 1:
            raise ValueError(f"max_chars={max_chars}; it must be >= 1")
        out = copy.deepcopy(self.bounded)

        def cap(node: dict[str, Any]) -> None:
            if node.get("type") == "string":
                node["maxLength"] = min(node.get("maxLength", max_chars), max_chars)
            for child in node.get("properties", {}).values():
                cap(child)
            if isinstance(node.get("items"), dict):
                cap(node["items"])

        cap(out)
        return out


def _string(max_chars: int | None = None) -> dict[str, Any]:
    if max_chars is None:
        return {"type": "string"}
    return {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": _NON_BLANK}


def _object(properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def answer_schema(kind: str, step: str, *, n_tasks: int | None = None) -> AnswerSchema:
    """The schema of `kind`'s answer at `step` ("brainstorm" or "example"); `n_tasks` (brainstorm
    only) bounds the task list of the bounded form (default :data:`DEFAULT_MAX_TASKS`).

    Example:
        >>> b = answer_schema("short_long", "brainstorm", n_tasks=20)
        >>> b.schema["properties"]["tasks"], b.bounded["properties"]["tasks"]["maxItems"]
        ({'type': 'array', 'items': {'type': 'string'}}, 20)
        >>> answer_schema("sts", "brainstorm")
        Traceback (most recent call last):
        ...
        ValueError: kind 'sts' has no brainstorm step; only short_long, long_short, short_short, long_long do
    """
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; use one of: {', '.join(KINDS)}")
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; use 'brainstorm' or 'example'")
    if step == "brainstorm":
        if kind not in _BRAINSTORM_KINDS:
            raise ValueError(f"kind {kind!r} has no brainstorm step; only {', '.join(_BRAINSTORM_KINDS)} do")
        max_items = n_tasks or DEFAULT_MAX_TASKS
        if max_items < 1:
            raise ValueError(f"n_tasks={n_tasks}; it must be >= 1")
        portable = _object({"tasks": {"type": "array", "items": _string()}})
        tasks = {"type": "array", "items": _string(TASK_MAX_CHARS), "minItems": 1, "maxItems": max_items}
        bounded = _object({"tasks": tasks})
    else:
        portable = _object({name: _string() for name in OUTPUT_FIELDS[kind]})
        bounded = _object({name: _string(FIELD_MAX_CHARS[kind][name]) for name in OUTPUT_FIELDS[kind]})
    return AnswerSchema(name=f"e5mistral_{kind}_{step}", schema=portable, bounded=bounded)
