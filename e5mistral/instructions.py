"""Task instructions: the query side reads ``Instruct: {instruction}\\nQuery: {query}``.

Documents carry no instruction. The wordings below are the project's own, one sentence per task
family, usable by name wherever an instruction is accepted.
"""

import difflib
import re

from .errors import UserError

__all__ = ["INSTRUCTIONS", "format_query", "get_instruction"]

_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a single word that reads as an instruction name, not as text

INSTRUCTIONS: dict[str, str] = {
    "web_search": "Given a web search query, find passages that answer it",
    "question_answering": "Given a question, find the passages that contain its answer",
    "fact_checking": "Given a claim, find documents that support or refute it",
    "duplicate_question": "Given a question, find questions that ask the same thing",
    "semantic_similarity": "Find sentences that mean the same as the given sentence",
    "bitext": "Given a sentence, find its translation in another language",
    "classification": "Classify the given text into its most fitting category",
    "clustering": "Identify the main topic of the given text",
    "summarization": "Given a summary, find other summaries of the same text",
    "code_search": "Given a description of what code should do, find code that does it",
    "scientific_claims": "Given a scientific claim, find abstracts that bear on it",
    "argument_retrieval": "Given an argument, find counter-arguments to it",
}


def get_instruction(name_or_text: str | None) -> str:
    """The instruction registered under ``name_or_text``, or the text itself; ``None`` gives ``""``.

    A single word made of letters, digits, ``_`` and ``-`` is taken as a name: an unknown one (a
    typo such as ``"web_serch"``) raises :class:`~e5mistral.errors.UserError` listing the known
    names, rather than becoming the instruction text. Anything else (words separated by spaces, or
    with punctuation) is free text and returned as it is.

    Example:

    ```python
    >>> get_instruction("web_search")
    'Given a web search query, find passages that answer it'
    >>> get_instruction("Retrieve recipes for the dish")
    'Retrieve recipes for the dish'
    >>> get_instruction("web_serch")
    Traceback (most recent call last):
    ...
    e5mistral.errors.UserError: unknown instruction name 'web_serch' (did you mean 'web_search'?); ...
    ```
    """
    if name_or_text is None:
        return ""
    if not isinstance(name_or_text, str):
        raise TypeError(f"instruction must be a str or None, got {type(name_or_text).__name__} ({name_or_text!r}).")
    name = name_or_text.strip()
    if name in INSTRUCTIONS:
        return INSTRUCTIONS[name]
    if _NAME.fullmatch(name):
        close = difflib.get_close_matches(name, INSTRUCTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"unknown instruction name {name!r}{hint}; known names: {', '.join(INSTRUCTIONS)}. "
            "For a free-text instruction write it as a sentence (e.g. 'Summarize the text')."
        )
    return name_or_text


def format_query(instruction: str | None, query: str) -> str:
    """Put a task instruction in front of a query; an empty or ``None`` instruction leaves it bare.

    ``instruction`` may also be a name from :data:`INSTRUCTIONS`; an unknown name raises
    :class:`~e5mistral.errors.UserError` (see :func:`get_instruction`).

    Example:

    ```python
    >>> format_query("Given a question, find the passages that contain its answer", "why is the sky blue")
    'Instruct: Given a question, find the passages that contain its answer\\nQuery: why is the sky blue'
    >>> format_query("", "why is the sky blue")
    'why is the sky blue'
    ```
    """
    if not isinstance(query, str):
        raise TypeError(f"format_query: query must be a str, got {type(query).__name__} ({query!r}).")
    instruction = get_instruction(instruction)
    if not instruction:
        return query
    return f"Instruct: {instruction}\nQuery: {query}"
