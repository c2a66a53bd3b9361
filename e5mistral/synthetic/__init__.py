"""Synthetic training data, the E5-mistral way: two-step LLM generation of six task kinds.

Modules, each importing only those listed before it (`builder` and `languages` import nothing
of the package):

- `builder`: the data format (kinds, fields, the log reader) and the self-contained `datasets`
  builder, copied beside the Parquet files as the recipe;
- `languages`: the XLM-R language list and weights;
- `tasks`: prompt templates and placeholders; `schemas`: each answer's JSON schema;
- `validation`: JSON extraction, the validators, training rows;
- `plan`: the requests of a run; `log`: the append-only generation log; `summary`: its statistics;
- `llm`: the backends (OpenAI-compatible endpoints, a local transformers model);
- `generate`: the pipeline, resumable, and the builder that generates a missing log;
- `export`: the Hub-ready folder, pushed through :mod:`e5mistral.hub`.

Example:
    >>> from e5mistral.synthetic import load_sample_training_rows
    >>> rows = load_sample_training_rows()
    >>> sorted(rows[0])
    ['instruction', 'language', 'negatives', 'positive', 'query', 'task']
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from .builder import KINDS, OUTPUT_FIELDS, dataset_rows, read_generation_log
from .generate import E5SyntheticData
from .validation import to_training_row

__all__ = [
    "KINDS",
    "OUTPUT_FIELDS",
    "SAMPLE_LOG",
    "E5SyntheticData",
    "dataset_rows",
    "load_sample_training_rows",
    "read_generation_log",
    "to_training_row",
    "training_rows_from_log",
]

SAMPLE_LOG = str(resources.files("e5mistral") / "data" / "sample_generations.jsonl")


def training_rows_from_log(log_path: str | os.PathLike, kinds=KINDS) -> list[dict[str, Any]]:
    """Training rows (the schema in the README's "Training" section) of every kind in a generation log, kind by kind, in
    request order, exact duplicates dropped.

    Example:
        >>> rows = training_rows_from_log(SAMPLE_LOG, kinds=("sts",))
        >>> {r["task"] for r in rows}
        {'sts'}
    """
    records = read_generation_log(log_path)
    return [to_training_row(kind, row) for kind in kinds for row in dataset_rows(records, kind)]


def load_sample_training_rows() -> list[dict[str, Any]]:
    """The bundled hand-written sample (`e5mistral/data/sample_generations.jsonl`, a generation
    log of all six kinds in several languages) converted into training rows: dicts with
    query, positive, negatives (list[str]), instruction, task, language."""
    return training_rows_from_log(SAMPLE_LOG)
