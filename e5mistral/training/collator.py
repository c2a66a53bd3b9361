"""Rows -> tokenized query and document batches, laid out for :func:`e5mistral.training.loss.info_nce`.

Queries read ``Instruct: {instruction}\\nQuery: {query}`` (:func:`e5mistral.format_query`);
documents are bare. The tokenizer appends EOS in its post-processor and truncation keeps it (the
EOS contract, checked once here), and each side pads to its own longest text, truncated to its
own max length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from e5mistral.instructions import format_query
from e5mistral.tokenization import check_eos, check_pad_token, clamp_max_length
from e5mistral.training.loss import text_ids
from e5mistral.training.objectives import batch_row_ids

__all__ = ["E5Collator"]


@dataclass
class E5Collator:
    """Collate training rows into ``{"query", "document", "document_ids", "query_ids", "document_rows", "task_ids"}``.

    Documents are ``[positive_0 .. positive_{B-1}, hard negatives of row 0, of row 1, ...]``, so
    query ``i``'s positive is document ``i``; ``document_rows`` names each document's row and
    ``query_ids`` / ``task_ids`` are text ids of the (instructed) queries and the rows' ``task``
    (for the options of :mod:`e5mistral.training.objectives`). Each row contributes its first ``num_negatives``
    hard negatives (all of them when None); rows may have fewer.

    Args:
        tokenizer: a tokenizer under the EOS contract (pad == eos is fine).
        query_max_length: truncation length of queries, EOS included.
        passage_max_length: truncation length of documents, EOS included.
        num_negatives: hard negatives per row (recipe: 1), None for all.
        max_position_embeddings: the model's position limit (``model.config.max_position_embeddings``);
            when given, larger max lengths are capped at it with a warning (see
            :func:`e5mistral.tokenization.clamp_max_length`).

    Example:
        >>> from e5mistral.testing import make_tiny_tokenizer
        >>> collate = E5Collator(make_tiny_tokenizer(), query_max_length=32, passage_max_length=64)
        >>> batch = collate([{"query": "q1", "positive": "p1", "negatives": ["n1"], "instruction": "Find it"},
        ...                  {"query": "q2", "positive": "p2", "negatives": [], "instruction": ""}])
        >>> batch["query"]["input_ids"].shape[0], batch["document"]["input_ids"].shape[0]   # 2 queries; p1, p2, n1
        (2, 3)
    """

    tokenizer: Any
    query_max_length: int = 512
    passage_max_length: int = 512
    num_negatives: int | None = 1
    max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        check_eos(self.tokenizer)
        check_pad_token(self.tokenizer, "E5Collator")
        limit = self.max_position_embeddings
        self.query_max_length = clamp_max_length(self.query_max_length, limit, "query_max_length")
        self.passage_max_length = clamp_max_length(self.passage_max_length, limit, "passage_max_length")

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("E5Collator got an empty batch (no rows); check the sampler and the dataset size.")
        queries, positives, negatives, counts, tasks = [], [], [], [], []
        for position, row in enumerate(rows):
            query, positive = _text(row, "query", position), _text(row, "positive", position)
            instruction = row.get("instruction") or ""
            if not isinstance(instruction, str):
                raise TypeError(f"batch row {position}: column 'instruction' must be a str, got {instruction!r}.")
            row_negatives = _negatives(row, position)
            queries.append(format_query(instruction, query))
            positives.append(positive)
            kept = row_negatives if self.num_negatives is None else row_negatives[: self.num_negatives]
            negatives.extend(kept)
            counts.append(len(kept))
            tasks.append(row.get("task") or "")
        documents = positives + negatives
        return {
            "query": self.tokenize(queries, self.query_max_length),  # (B, Tq)
            "document": self.tokenize(documents, self.passage_max_length),  # (B + M, Td)
            "document_ids": text_ids(documents),  # (B + M,)
            "query_ids": text_ids(queries),  # (B,)
            "document_rows": batch_row_ids(len(rows), counts),  # (B + M,)
            "task_ids": text_ids(tasks),  # (B,)
        }

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, Tensor]:
        """Tokenize with EOS appended (kept under truncation), right-padded to the longest text.

        Right padding whatever the tokenizer's ``padding_side``: pooling reads the mask, so either side
        gives the same embeddings, but only trailing padding columns can be cut off a length-sorted
        chunk without moving any token's position (see :mod:`e5mistral.training.gradcache`).
        """
        encoded = self.tokenizer(
            texts, truncation=True, max_length=max_length, padding=True, padding_side="right", return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _text(row: dict[str, Any], column: str, position: int) -> str:
    if column not in row:
        raise ValueError(f"batch row {position}: column {column!r} is missing (row has {sorted(row)}).")
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"batch row {position}: column {column!r} must be a non-empty str, got {value!r}.")
    return value


def _negatives(row: dict[str, Any], position: int) -> list[str]:
    if "negatives" in row:
        value = row["negatives"]
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(
                f"batch row {position}: column 'negatives' must be a list of non-empty str, got {value!r}."
            )
        return value
    if row.get("negative") is not None:
        return [_text(row, "negative", position)]
    return []
