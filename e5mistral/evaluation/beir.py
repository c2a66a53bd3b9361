"""BEIR-format folders: loading one split, the text a document is embedded as, and the instruction per set.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``; a header line is
optional). Documents are embedded bare as ``"{title} {text}"`` (stripped; the same join MTEB and
BEIR use); queries get the set's instruction (:data:`BEIR_INSTRUCTIONS`). Evaluating a folder is
:func:`e5mistral.evaluation.retrieval.evaluate_beir`.

Example:

```python
>>> data = load_beir("data/nfcorpus", split="test")
>>> instruction = BEIR_INSTRUCTIONS[data.name]  # 'question_answering'
>>> texts = [document_text(doc) for doc in data.corpus.values()]
```
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BEIR_INSTRUCTIONS", "BeirDataset", "document_text", "load_beir"]

logger = logging.getLogger(__name__)

# Instruction names (keys of e5mistral.INSTRUCTIONS) for the BEIR sets, by folder name; the
# families follow the task each set poses (as the recipe's per-task instructions do).
BEIR_INSTRUCTIONS: dict[str, str] = {
    "msmarco": "web_search",
    "dbpedia-entity": "web_search",
    "trec-covid": "question_answering",
    "nfcorpus": "question_answering",
    "nq": "question_answering",
    "hotpotqa": "question_answering",
    "fiqa": "question_answering",
    "webis-touche2020": "question_answering",
    "arguana": "argument_retrieval",
    "quora": "duplicate_question",
    "cqadupstack": "duplicate_question",
    "fever": "fact_checking",
    "climate-fever": "fact_checking",
    "scifact": "scientific_claims",
}


@dataclass
class BeirDataset:
    """One split of a BEIR folder. `corpus` maps doc id -> {"title": str, "text": str}."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = ""
    split: str = "test"


def document_text(doc: Mapping[str, str]) -> str:
    """The text a document is embedded as: title and text joined by a space, stripped.

    Example:

    ```python
    >>> document_text({"title": "Mont Blanc", "text": "It rises 4,806 m."})
    'Mont Blanc It rises 4,806 m.'
    >>> document_text({"title": "", "text": "No title."})
    'No title.'
    ```
    """
    return f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()


def _read_jsonl(path: Path, what: str) -> Iterator[dict]:
    if not path.is_file():
        raise FileNotFoundError(
            f"BEIR {what} file {str(path)!r} does not exist; a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/<split>.tsv."
        )
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "_id" not in row:
                raise ValueError(
                    f"{path}:{line_no}: row has no '_id' field (keys {sorted(row)}); every {what} row needs '_id'."
                )
            yield row


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Load one split of a BEIR-format folder.

    Only queries that appear in ``qrels/<split>.tsv`` are kept. Qrels rows are
    ``query-id<TAB>corpus-id<TAB>score`` (BEIR) or ``query-id<TAB>0<TAB>corpus-id<TAB>score`` (TREC). A qrels line whose query is not
    in ``queries.jsonl`` is dropped with a warning; qrels grades are integers.

    Example:

    ```python
    >>> data = load_beir("data/scifact", split="test")
    >>> len(data.queries), len(data.corpus)
    (300, 5183)
    ```
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise FileNotFoundError(
            f"no qrels for split={split!r}: {str(qrels_path)!r} does not exist; splits found: {available}."
        )

    corpus = {
        str(row["_id"]): {"title": row.get("title") or "", "text": row.get("text") or ""}
        for row in _read_jsonl(folder / "corpus.jsonl", "corpus")
    }
    all_queries = {str(row["_id"]): row.get("text") or "" for row in _read_jsonl(folder / "queries.jsonl", "queries")}

    qrels: dict[str, dict[str, int]] = {}
    missing_queries: set[str] = set()
    with qrels_path.open(encoding="utf-8", newline="") as f:
        for line_no, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not fields or not "".join(fields).strip():
                continue
            if len(fields) < 3:
                raise ValueError(
                    f"{qrels_path}:{line_no}: expected 'query-id<TAB>corpus-id<TAB>score', got {fields!r}."
                )
            # BEIR: query-id, corpus-id, score; TREC-style rows carry an iteration column second
            qid, doc_id, grade = (
                (fields[0], fields[2], fields[3]) if len(fields) == 4 else (fields[0], fields[1], fields[-1])
            )
            try:
                grade_value = int(float(grade))
            except ValueError:
                if line_no == 1:  # header line
                    continue
                raise ValueError(f"{qrels_path}:{line_no}: score {grade!r} is not a number.") from None
            if qid not in all_queries:
                missing_queries.add(qid)
                continue
            qrels.setdefault(qid, {})[doc_id] = grade_value
    if missing_queries:
        logger.warning(
            "%s: %d qrels queries are not in queries.jsonl and were dropped (e.g. %r).",
            qrels_path,
            len(missing_queries),
            min(missing_queries),
        )
    if not qrels:
        raise ValueError(f"{qrels_path} judges no query of queries.jsonl; check that the ids match.")
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels, name=folder.name, split=split)
