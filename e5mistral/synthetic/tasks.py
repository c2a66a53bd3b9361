"""The six task kinds of the recipe: prompt templates and placeholders.

Each kind has at least two wordings for each step; a request draws one at random (seeded). The
four asymmetric kinds (`short_long`, `long_short`, `short_short`, `long_long`) first brainstorm
task definitions (step 1), then write one JSON example for one of them in a fresh conversation
(step 2). `sts` and `bitext` have a fixed task and skip step 1. The prompts are this project's
own wording with the recipe's fields, placeholders and value sets (the paper's appendix; the
README's "Synthetic data" section). The answers are checked, and turned into training rows, in
:mod:`~e5mistral.synthetic.validation`.

Example:
    >>> import random
    >>> request = plan_placeholders("sts", random.Random(0), {"en": 1.0})
    >>> messages = example_messages("sts", 0, STS_TASK, request)
    >>> messages[0]["role"], '"S3"' in messages[0]["content"]
    ('user', True)
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from .languages import language_name, sample_language, sample_language_pair

__all__ = [
    "BITEXT_TASK",
    "BRAINSTORM_KINDS",
    "PLACEHOLDER_VALUES",
    "STS_TASK",
    "brainstorm_messages",
    "example_messages",
    "fixed_task",
    "num_templates",
    "plan_placeholders",
    "reask_message",
]

BRAINSTORM_KINDS: tuple[str, ...] = ("short_long", "long_short", "short_short", "long_long")
STS_TASK = "Retrieve texts whose meaning is close to that of the given text."
BITEXT_TASK = "Given a sentence, retrieve the sentence that translates it."

_CLARITY = ("clear", "understandable with some effort", "ambiguous")
_SCHOOL = ("high school", "college", "PhD")

# The value sets each placeholder is drawn from (the language placeholders are drawn separately).
PLACEHOLDER_VALUES: dict[str, dict[str, tuple[Any, ...]]] = {
    "short_long": {
        "query_type": ("extremely long-tail", "long-tail", "common"),
        "query_length": ("less than 5 words", "5 to 15 words", "at least 10 words"),
        "clarity": _CLARITY,
        "num_words": (50, 100, 200, 300, 400, 500),
        "difficulty": _SCHOOL,
    },
    "long_short": {
        "num_words": ("less than 10", "at least 10", "at least 50", "at least 100", "at least 200"),
        "clarity": _CLARITY,
        "difficulty": _SCHOOL,
    },
    "short_short": {},
    "long_long": {},
    "sts": {
        "unit": ("sentence", "phrase", "passage"),
        "high_score": (4.0, 4.5, 5.0),
        "low_score": (2.5, 3.0, 3.5),
        "difficulty": ("elementary school", "high school", "college"),
    },
    "bitext": {
        "high_score": (4.0, 4.5, 5.0),
        "low_score": (1.5, 2.0, 2.5),
    },
}

# ---------------------------------------------------------------------------------------------
# Step 1: brainstorm prompts. `{n}` is the number of task definitions asked for.
# ---------------------------------------------------------------------------------------------
_BRAINSTORM: dict[str, tuple[str, ...]] = {
    "short_long": (
        (
            "Think up {n} different text retrieval tasks. In each task a user types a short query "
            "and a search system must find longer documents that satisfy it. Describe every task in "
            "one sentence that says what the query is and what should be retrieved. Vary the domains "
            "(science, law, health, software, shopping, travel, hobbies, history...), the kind of user "
            "and the kind of document.\n\n"
            'Reply with a JSON object of the form {{"tasks": ["...", "..."]}} and nothing else.'
        ),
        (
            "We are building training data for a text embedding model and need a broad set of "
            "information-retrieval scenarios. Propose {n} of them. Write each one as a single sentence "
            'such as "Given a question about X, retrieve Y that Z". Mix everyday and expert needs, '
            "questions and keyword searches, and many document types (forum posts, manuals, papers, "
            "reviews, news, regulations).\n\n"
            'Answer only with JSON: {{"tasks": [<one string per task>]}}.'
        ),
    ),
    "long_short": (
        (
            "List {n} varied text classification tasks. For each, write one sentence that says what "
            "the input text is and which labels it is sorted into (for example sentiment, topic, "
            "intent, urgency, genre, author stance). Cover many domains and text types.\n\n"
            'Reply with a JSON object {{"tasks": ["...", "..."]}} and nothing else.'
        ),
        (
            "Come up with {n} classification problems where a model reads a piece of text and assigns "
            "it one label from a fixed set. Describe each problem in a single sentence that names the "
            "kind of text and the label set. Prefer diverse, realistic problems over textbook ones.\n\n"
            'Answer only with JSON: {{"tasks": [<one string per task>]}}.'
        ),
    ),
    "short_short": (
        (
            "Brainstorm {n} text matching tasks in which both the query and the matched text are short: "
            "a phrase, a title, or one or two sentences. Describe each task in one sentence, e.g. what "
            "the query is and what short text it should be paired with. Make the tasks diverse.\n\n"
            'Reply with a JSON object {{"tasks": ["...", "..."]}} and nothing else.'
        ),
        (
            "Suggest {n} different ways of pairing one short text with another short text that belongs "
            "to it (a headline and its summary sentence, a question and its rephrasing, a keyword and "
            "a definition...). Give each as a one-sentence task definition.\n\n"
            'Answer only with JSON: {{"tasks": [<one string per task>]}}.'
        ),
    ),
    "long_long": (
        (
            "Brainstorm {n} text matching tasks in which both the query and the matched text are long "
            "documents (for example a research abstract and a related full paper, or a bug report and "
            "its duplicate). Describe each task in one sentence. Make the tasks diverse.\n\n"
            'Reply with a JSON object {{"tasks": ["...", "..."]}} and nothing else.'
        ),
        (
            "Suggest {n} scenarios where a whole document is used to find another whole document that "
            "corresponds to it. Give each as a one-sentence task definition naming both document "
            "types and how they relate.\n\n"
            'Answer only with JSON: {{"tasks": [<one string per task>]}}.'
        ),
    ),
}

# ---------------------------------------------------------------------------------------------
# Step 2: example prompts. Placeholders: {task}, {language} and the kind's PLACEHOLDER_VALUES;
# bitext uses {src_lang} and {tgt_lang}.
# ---------------------------------------------------------------------------------------------
_EXAMPLE: dict[str, tuple[str, ...]] = {
    "short_long": (
        (
            "Here is a retrieval task: {task}\n\n"
            "Write one example for this task as a JSON object with three string fields:\n"
            '- "user_query": a {query_type} query of {query_length}; it should be {clarity}.\n'
            '- "positive_document": a document of at least {num_words} words that fully satisfies the query.\n'
            '- "hard_negative_document": a document on a related subject that is only partly useful '
            "and serves the query clearly worse than the positive document.\n\n"
            "Rules: write every field in {language}. Write the documents independently of the query, "
            "without copying its wording. Do not say why a document is or is not relevant. Reading the "
            "query and documents should need {difficulty} level knowledge.\n"
            "Output the JSON object only."
        ),
        (
            "You create training data for a search engine. The task is: {task}\n"
            "All text must be in {language} and pitched at a {difficulty} reader.\n\n"
            'Produce a JSON object with the keys "user_query", "positive_document" and '
            '"hard_negative_document". The query is {query_type}, {query_length} long and '
            "{clarity}. The positive document has at least {num_words} words and is the best answer. "
            "The hard negative looks relevant at first sight and shares the topic, but it does not "
            "really answer the query. The documents must not repeat the query verbatim and must not "
            "comment on their own relevance.\n"
            "Return nothing but the JSON."
        ),
    ),
    "long_short": (
        (
            "Here is a classification task: {task}\n\n"
            "Write one example for it as a JSON object with three string fields:\n"
            '- "input_text": a text of {num_words} words that is {clarity}.\n'
            '- "label": the correct label of the input text, taken from the task\'s label set.\n'
            '- "misleading_label": another label of the same label set that a careless reader might '
            "pick, but that fits the text worse.\n\n"
            "Rules: write the input text in {language}; it needs {difficulty} level knowledge to "
            "understand. Neither label may appear word for word in the input text.\n"
            "Output the JSON object only."
        ),
        (
            "Task: {task}\n"
            'Create a labelled example as JSON with the keys "input_text", "label" and '
            '"misleading_label". The input text is in {language}, has {num_words} words, is '
            '{clarity}, and suits a {difficulty} reader. "label" is the right answer; '
            '"misleading_label" must be a different, valid label of this task that is less '
            "appropriate. Do not write either label inside the input text.\n"
            "Return nothing but the JSON."
        ),
    ),
    "short_short": (
        (
            "Here is a text matching task: {task}\n\n"
            'Write one example as a JSON object with two string fields, "input" and '
            '"positive_document". Both are short: a phrase or one or two sentences. They must share '
            "few words and be written independently of each other. Write both in {language}.\n"
            "Output the JSON object only."
        ),
        (
            "Task: {task}\n"
            'Give one matching pair as JSON with the keys "input" (the query side) and '
            '"positive_document" (the text that matches it). Keep each side to a phrase or one or '
            "two sentences, avoid reusing the same words on both sides, and write everything in "
            "{language}.\nReturn nothing but the JSON."
        ),
    ),
    "long_long": (
        (
            "Here is a text matching task: {task}\n\n"
            'Write one example as a JSON object with two string fields, "input" and '
            '"positive_document". Each is a long document of at least 300 words. They must share '
            "few words and read as if written independently. Write both in {language}.\n"
            "Output the JSON object only."
        ),
        (
            "Task: {task}\n"
            'Give one matching pair of long documents as JSON with the keys "input" and '
            '"positive_document", each at least 300 words long, both in {language}. The second '
            "must correspond to the first without paraphrasing it sentence by sentence.\n"
            "Return nothing but the JSON."
        ),
    ),
    "sts": (
        (
            'Write three {unit}s in {language} as a JSON object with the string fields "S1", "S2" '
            'and "S3". On a scale from 1 (unrelated) to 5 (same meaning), S1 and S2 should score '
            "about {high_score} and S1 and S3 about {low_score}. All three should share some words. "
            "Use language a reader with {difficulty} education understands.\n"
            "Output the JSON object only."
        ),
        (
            'Create a semantic similarity triple in {language}: JSON with the keys "S1", "S2", '
            '"S3", each a {unit}. S2 means nearly the same as S1 (similarity {high_score} out of 5); '
            "S3 overlaps with S1 in wording but differs more in meaning (similarity {low_score} out of "
            "5). Aim at a {difficulty} reading level.\nReturn nothing but the JSON."
        ),
    ),
    "bitext": (
        (
            'Write a translation triple as a JSON object with the string fields "S1", "S2" and '
            '"S3". S1 is a sentence in {src_lang}. S2 is a {tgt_lang} translation of S1 of quality '
            "about {high_score} on a 1-5 scale. S3 is a fluent {tgt_lang} sentence that translates S1 "
            "badly, about {low_score} out of 5: wrong keywords or numbers, or information left out or "
            "added.\nOutput the JSON object only."
        ),
        (
            "Source language: {src_lang}. Target language: {tgt_lang}.\n"
            'Return JSON with the keys "S1" (a sentence in the source language), "S2" (a good '
            'translation of S1 into the target language, rated {high_score}/5) and "S3" (a natural-'
            "sounding target-language sentence that is a poor translation of S1, rated {low_score}/5, "
            "because a key word, a number or a piece of information is wrong, missing or added).\n"
            "Return nothing but the JSON."
        ),
    ),
}

_REASK = (
    "Your answer could not be used: {reason}. Reply again with only the JSON object, with exactly the requested keys."
)


def _check_kind(kind: str) -> None:
    if kind not in _EXAMPLE:  # every kind has an example step, in the order of builder.KINDS
        raise ValueError(f"unknown task kind {kind!r}; use one of: {', '.join(_EXAMPLE)}")


def fixed_task(kind: str) -> str | None:
    """The fixed task definition of `sts` / `bitext`; None for kinds that brainstorm."""
    return {"sts": STS_TASK, "bitext": BITEXT_TASK}.get(kind)


def num_templates(kind: str, step: str) -> int:
    """How many prompt wordings `kind` has for `step` ("brainstorm" or "example")."""
    _check_kind(kind)
    table = _BRAINSTORM if step == "brainstorm" else _EXAMPLE
    return len(table.get(kind, ()))


def plan_placeholders(kind: str, rng: random.Random, language_weights: Mapping[str, float]) -> dict[str, Any]:
    """Draw the placeholder values of one example request: the language (a source/target pair
    for bitext, as codes) and one value from each of the kind's value sets.

    Example:
        >>> p = plan_placeholders("short_long", random.Random(3), {"de": 1.0})
        >>> p["language"], p["num_words"] in (50, 100, 200, 300, 400, 500)
        ('de', True)
    """
    _check_kind(kind)
    if kind == "bitext":
        src, tgt = sample_language_pair(rng, language_weights)
        values: dict[str, Any] = {"language": src, "tgt_lang": tgt}
    else:
        values = {"language": sample_language(rng, language_weights)}
    for name, choices in PLACEHOLDER_VALUES[kind].items():
        values[name] = rng.choice(choices)
    return values


def brainstorm_messages(kind: str, template: int, n_tasks: int = 20) -> list[dict[str, str]]:
    """Step 1 chat messages: ask for `n_tasks` one-sentence task definitions of `kind`."""
    if kind not in _BRAINSTORM:
        raise ValueError(f"kind {kind!r} has no brainstorm step; only {', '.join(BRAINSTORM_KINDS)} do")
    return [{"role": "user", "content": _BRAINSTORM[kind][template].format(n=n_tasks)}]


def _score(value: float) -> str:
    return f"{value:g}"


def example_messages(kind: str, template: int, task: str, placeholders: Mapping[str, Any]) -> list[dict[str, str]]:
    """Step 2 chat messages (a fresh conversation): one JSON example of `kind` for `task`."""
    _check_kind(kind)
    values = {k: v for k, v in placeholders.items()}
    values["task"] = task
    if kind == "bitext":
        values["src_lang"] = language_name(placeholders["language"])
        values["tgt_lang"] = language_name(placeholders["tgt_lang"])
    else:
        values["language"] = language_name(placeholders["language"])
    for name in ("high_score", "low_score"):
        if name in values:
            values[name] = _score(values[name])
    return [{"role": "user", "content": _EXAMPLE[kind][template].format(**values)}]


def reask_message(reason: str) -> dict[str, str]:
    """The follow-up turn sent after an unusable answer, naming what was wrong."""
    return {"role": "user", "content": _REASK.format(reason=reason)}
