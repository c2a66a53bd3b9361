"""Answers checked: the JSON parsed out of an LLM answer, the validators, the training row.

An answer is parsed strictly (:func:`extract_json`: plain JSON, a fenced block, or JSON inside
prose; never `eval`) and validated (:func:`validate_brainstorm`, :func:`validate_example`); an
unusable one raises :class:`InvalidAnswer`, whose `reason` the generator records. A valid example
becomes a training row with :func:`to_training_row`, per kind:

| kind | query | positive | negatives | instruction |
|---|---|---|---|---|
| short_long | user_query | positive_document | [hard_negative_document] | brainstormed task |
| long_short | input_text | label | [misleading_label] | brainstormed task |
| short_short | input | positive_document | [] | brainstormed task |
| long_long | input | positive_document | [] | brainstormed task |
| sts | S1 | S2 | [S3] | `tasks.STS_TASK` |
| bitext | S1 (source language) | S2 | [S3] | `tasks.BITEXT_TASK` |

The paper does not spell out the classification/STS/bitext mapping; this is the natural reading
of the field names: the label is the "document" a text is matched to, and S3 (less similar, or
a wrong translation) is the hard negative.

Example:
    >>> validate_example("sts", extract_json('```json\\n{"S1": "a", "S2": "b", "S3": "c"}\\n```'))
    {'S1': 'a', 'S2': 'b', 'S3': 'c'}
    >>> row = {"task": "Retrieve similar texts.", "language": "en", "S1": "a", "S2": "b", "S3": "c"}
    >>> to_training_row("sts", row)["negatives"]
    ['c']
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .builder import KINDS, OUTPUT_FIELDS

__all__ = ["InvalidAnswer", "extract_json", "to_training_row", "validate_brainstorm", "validate_example"]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; use one of: {', '.join(KINDS)}")


class InvalidAnswer(ValueError):
    """An LLM answer that cannot be used. `reason` is a short stable tag for failure counts
    (e.g. "invalid_json", "missing_field"); `detail` says what was wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def extract_json(text: str) -> Any:
    """Parse the JSON value in an LLM answer: the whole text, else a fenced block, else the first
    `{...}` or `[...]` inside prose. Only `json` parsing is used (no eval); NaN/Infinity are
    refused. Raises :class:`InvalidAnswer` ("invalid_json") when nothing parses.

    Example:
        >>> extract_json('Sure! Here it is:\\n```json\\n{"S1": "a"}\\n```')
        {'S1': 'a'}
        >>> extract_json('The answer is {"label": "x"} as requested.')
        {'label': 'x'}
    """
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        try:
            return decoder.decode(candidate)
        except ValueError:
            pass
    tried = 0
    for match in re.finditer(r"[\[{]", text):
        tried += 1
        if tried > 64:  # bound the work on long junk answers
            break
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            return value
    snippet = " ".join(text.split())[:80]
    raise InvalidAnswer("invalid_json", f"no JSON object could be parsed from the answer: {snippet!r}")


def validate_brainstorm(answer: Any) -> list[str]:
    """Task definitions from a parsed step-1 answer: `{"tasks": [...]}` or a bare list of
    non-empty strings; blanks and repeats are dropped.

    Example:
        >>> validate_brainstorm({"tasks": ["Retrieve A.", " ", "Retrieve A.", "Retrieve B."]})
        ['Retrieve A.', 'Retrieve B.']
    """
    tasks = answer.get("tasks") if isinstance(answer, dict) else answer
    if not isinstance(tasks, list):
        raise InvalidAnswer("off_schema", f'expected {{"tasks": [...]}} or a JSON list, got {type(answer).__name__}')
    clean = [t.strip() for t in tasks if isinstance(t, str) and t.strip()]
    if not clean:
        raise InvalidAnswer("empty_field", "the task list holds no non-empty string")
    return list(dict.fromkeys(clean))


def validate_example(kind: str, answer: Any) -> dict[str, str]:
    """The kind's fields of a parsed step-2 answer, checked: every field present, a string and
    non-empty; the classification label differs from the misleading label; the query side
    differs from the positive side; a triple's three texts are all there and distinct.
    Extra keys are ignored. Raises :class:`InvalidAnswer` otherwise.

    Example:
        >>> validate_example("long_short", {"input_text": "It broke.", "label": "bad", "misleading_label": "Bad "})
        Traceback (most recent call last):
        ...
        e5mistral.synthetic.validation.InvalidAnswer: same_label: label and misleading_label are both 'bad'
    """
    _check_kind(kind)
    if not isinstance(answer, dict):
        raise InvalidAnswer("off_schema", f"expected a JSON object, got {type(answer).__name__}")
    fields = OUTPUT_FIELDS[kind]
    missing = [f for f in fields if f not in answer]
    if missing:
        raise InvalidAnswer("missing_field", f"missing {', '.join(missing)}; got keys {sorted(answer)}")
    out: dict[str, str] = {}
    for field in fields:
        value = answer[field]
        if not isinstance(value, str):
            raise InvalidAnswer("off_schema", f"{field} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise InvalidAnswer("empty_field", f"{field} is empty")
        out[field] = value.strip()
    if kind == "long_short" and out["label"].casefold() == out["misleading_label"].casefold():
        raise InvalidAnswer("same_label", f"label and misleading_label are both {out['label'].casefold()!r}")
    if out[fields[0]] == out[fields[1]]:
        raise InvalidAnswer("same_text", f"{fields[0]} and {fields[1]} are identical")
    if len(fields) == 3 and out[fields[1]] == out[fields[2]]:
        raise InvalidAnswer("same_text", f"{fields[1]} and {fields[2]} are identical")
    return out


def to_training_row(kind: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Convert one dataset row (a config's columns) into the training-row schema (the README's "Training" section):
    query, positive, negatives, instruction, task, language. See the module docstring table.

    Example:
        >>> out = to_training_row("long_short", {"task": "Classify the tone of a review.", "language": "en",
        ...     "input_text": "Arrived late and cold.", "label": "negative", "misleading_label": "neutral"})
        >>> out["query"], out["positive"], out["negatives"], out["instruction"], out["task"]
        ('Arrived late and cold.', 'negative', ['neutral'], 'Classify the tone of a review.', 'long_short')
    """
    _check_kind(kind)
    query_field, positive_field, *negative_fields = OUTPUT_FIELDS[kind]
    missing = [f for f in (*OUTPUT_FIELDS[kind], "task", "language") if f not in row]
    if missing:
        raise KeyError(f"a {kind} row needs the columns {', '.join(missing)}; got {sorted(row)}")
    return {
        "query": row[query_field],
        "positive": row[positive_field],
        "negatives": [row[f] for f in negative_fields],
        "instruction": row["task"],
        "task": kind,
        "language": row["language"],
    }
