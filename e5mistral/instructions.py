"""Task instructions: the query side reads ``Instruct: {instruction}\\nQuery: {query}``.

Documents carry no instruction. The wordings below are the project's own, one sentence per task
family, usable by name wherever an instruction is accepted.
"""

__all__ = ["INSTRUCTIONS", "format_query", "get_instruction"]

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

    Example:

    ```python
    >>> get_instruction("web_search")
    'Given a web search query, find passages that answer it'
    >>> get_instruction("Retrieve recipes for the dish")
    'Retrieve recipes for the dish'
    ```
    """
    if name_or_text is None:
        return ""
    return INSTRUCTIONS.get(name_or_text, name_or_text)


def format_query(instruction: str | None, query: str) -> str:
    """Put a task instruction in front of a query; an empty or ``None`` instruction leaves it bare.

    ``instruction`` may also be a name from :data:`INSTRUCTIONS`.

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
