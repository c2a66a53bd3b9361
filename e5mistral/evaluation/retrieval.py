"""Retrieval evaluation on BEIR-format folders with exact, block-bounded top-k search.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``; a header line is
optional). Queries are embedded with the task instruction (``Instruct: ...\\nQuery: ...``),
documents bare as ``"{title} {text}"`` (stripped; the same join MTEB and BEIR use).

Search is exact: cosine scores are matrix products of L2-normalised embeddings. The corpus is
embedded and scored one block of ``block_size`` documents at a time, keeping only a running top-k
per query, so memory is ``O(Q * (top_k + block_size))`` scores plus one block of embeddings,
whatever the corpus size. Among documents with equal scores the one earlier in the corpus wins
a place in the top k (the metrics then order tied documents by id; see
:mod:`e5mistral.evaluation.metrics`). "Equal" is in floating point: a matrix product over a block
may round differently from one over the whole corpus, so two documents whose scores differ only
in the last bit can swap between block layouts; exactly equal scores never do.

Example:

```python
>>> from e5mistral import E5Embedder
>>> from e5mistral.evaluation.retrieval import evaluate_beir
>>> embedder = E5Embedder.from_pretrained("out/my-e5")
>>> result = evaluate_beir(embedder, "data/scifact", instruction="scientific_claims")
>>> result.metrics["ndcg@10"]
```
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from .metrics import DEFAULT_K_VALUES, retrieval_metrics

__all__ = [
    "BEIR_INSTRUCTIONS",
    "DEFAULT_BLOCK_SIZE",
    "BeirDataset",
    "Embedder",
    "RetrievalResult",
    "document_text",
    "evaluate_beir",
    "evaluate_retrieval",
    "exact_search",
    "load_beir",
    "search",
]

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 16384

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


class Embedder(Protocol):
    """What the evaluators need: :class:`e5mistral.E5Embedder` or anything shaped like it.

    Both methods return an `(N, D)` tensor of L2-normalised embeddings, rows in input order.
    """

    def encode_queries(self, queries: Sequence[str], instruction: str | None = None, **kwargs) -> torch.Tensor: ...

    def encode_documents(self, documents: Sequence[str], **kwargs) -> torch.Tensor: ...


@dataclass
class BeirDataset:
    """One split of a BEIR folder. `corpus` maps doc id -> {"title": str, "text": str}."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = ""
    split: str = "test"


@dataclass
class RetrievalResult:
    """`run`: query id -> {doc id: cosine score} (top_k per query); `metrics`: see `retrieval_metrics`."""

    metrics: dict[str, float]
    run: dict[str, dict[str, float]] = field(repr=False)
    num_queries: int = 0
    num_documents: int = 0


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


def _merge_top_k(
    best_scores: torch.Tensor, best_idx: torch.Tensor, scores: torch.Tensor, offset: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one block of scores into the running top k, ties going to the lower corpus index.

    best_scores/best_idx: (Q, k0) in canonical order (score desc, index asc), all indices < offset.
    scores: (Q, B), the block's columns are corpus indices offset .. offset + B - 1.
    """
    k = min(top_k, scores.shape[1])
    vals, cols = scores.topk(k, dim=1)  # (Q, k); which tied element topk keeps is unspecified
    # Rows where the k-th value is shared by more than k elements: choose by stable sort instead.
    tied = (scores >= vals[:, -1:]).sum(dim=1) > k  # (Q,)
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        stable_vals, stable_cols = scores[rows].sort(dim=1, descending=True, stable=True)  # (R, B)
        vals[rows], cols[rows] = stable_vals[:, :k], stable_cols[:, :k]
    cols, order = cols.sort(dim=1)  # (Q, k) index ascending, so the stable sort below keeps it for ties
    vals = vals.gather(1, order)
    cand_scores = torch.cat([best_scores, vals], dim=1)  # (Q, k0 + k)
    cand_idx = torch.cat([best_idx, cols + offset], dim=1)  # (Q, k0 + k)
    cand_scores, order = cand_scores.sort(dim=1, descending=True, stable=True)
    return cand_scores[:, :top_k], cand_idx.gather(1, order[:, :top_k])


def exact_search(
    query_embeddings: torch.Tensor,
    document_embeddings: torch.Tensor | Iterable[torch.Tensor],
    top_k: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner-product search, one block of documents at a time.

    Args:
        query_embeddings: `(Q, D)`, L2-normalised (so scores are cosines).
        document_embeddings: `(N, D)` tensor, split into blocks of `block_size` rows, or an
            iterable of `(B_i, D)` blocks in corpus order (e.g. embedded lazily), so the whole
            corpus never has to be in memory.
        top_k: results per query (fewer if the corpus is smaller).
        block_size: rows per block when `document_embeddings` is one tensor.

    Returns:
        `scores (Q, k)` float and `indices (Q, k)` long (corpus row numbers), best first; equal
        scores are ordered by ascending corpus index. Computed on the queries' device and dtype.

    Example:

    ```python
    >>> q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    >>> d = torch.nn.functional.normalize(torch.randn(100, 8), dim=-1)
    >>> scores, idx = exact_search(q, d, top_k=5, block_size=16)
    >>> torch.equal(idx, (q @ d.T).topk(5).indices)
    True
    ```
    """
    if top_k < 1:
        raise ValueError(f"exact_search: top_k={top_k} must be >= 1.")
    if block_size < 1:
        raise ValueError(f"exact_search: block_size={block_size} must be >= 1.")
    if query_embeddings.ndim != 2:
        raise ValueError(f"exact_search: query_embeddings must be (Q, D), got shape {tuple(query_embeddings.shape)}.")
    if isinstance(document_embeddings, torch.Tensor):
        document_embeddings = document_embeddings.split(block_size)
    num_queries, dim = query_embeddings.shape
    best_scores = query_embeddings.new_empty((num_queries, 0))  # (Q, 0)
    best_idx = torch.empty((num_queries, 0), dtype=torch.long, device=query_embeddings.device)
    offset = 0
    for block in document_embeddings:  # (B, D)
        if block.ndim != 2 or block.shape[1] != dim:
            raise ValueError(
                f"exact_search: a document block has shape {tuple(block.shape)}, expected (B, {dim}) to match the queries."
            )
        if block.shape[0] == 0:
            continue
        block = block.to(device=query_embeddings.device, dtype=query_embeddings.dtype)
        scores = query_embeddings @ block.T  # (Q, B)
        best_scores, best_idx = _merge_top_k(best_scores, best_idx, scores, offset, top_k)
        offset += block.shape[0]
    if torch.isnan(best_scores).any():
        raise ValueError(
            "exact_search: scores contain NaN; the embeddings contain NaN (check the model's dtype and inputs)."
        )
    return best_scores, best_idx


def _document_blocks(
    embedder: Embedder, texts: Sequence[str], block_size: int, show_progress_bar: bool | None
) -> Iterator[torch.Tensor]:
    for start in range(0, len(texts), block_size):
        yield embedder.encode_documents(
            texts[start : start + block_size], show_progress_bar=show_progress_bar
        )  # (B, D)


def search(
    embedder: Embedder,
    queries: Mapping[str, str],
    corpus: Mapping[str, Mapping[str, str] | str],
    instruction: str | None,
    top_k: int = 100,
    block_size: int = DEFAULT_BLOCK_SIZE,
    ignore_identical_ids: bool = False,
    show_progress_bar: bool | None = None,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """Embed queries (with `instruction`) and corpus (bare), return each query's top-k documents.

    `corpus` values are BEIR dicts (title, text) or plain strings. With `ignore_identical_ids`,
    a document whose id equals the query id is never returned (BEIR's convention for sets such
    as ArguAna and Quora where queries are also in the corpus). Scores are computed on `device`
    (e.g. "cuda"; default: where the embedder returns embeddings, the CPU for `E5Embedder`).

    Returns:
        query id -> {doc id: cosine score}, at most `top_k` documents each.
    """
    query_ids = list(queries)
    doc_ids = list(corpus)
    if not query_ids or not doc_ids:
        raise ValueError(f"search: got {len(query_ids)} queries and {len(doc_ids)} documents; both must be non-empty.")
    doc_texts = [doc if isinstance(doc, str) else document_text(doc) for doc in corpus.values()]
    q_emb = embedder.encode_queries(
        [queries[qid] for qid in query_ids], instruction=instruction, show_progress_bar=show_progress_bar
    )  # (Q, D)
    if device is not None:
        q_emb = q_emb.to(device)  # exact_search moves each document block to the queries' device
    k = top_k + 1 if ignore_identical_ids else top_k
    scores, idx = exact_search(
        q_emb, _document_blocks(embedder, doc_texts, block_size, show_progress_bar), k, block_size
    )  # (Q, k)
    run: dict[str, dict[str, float]] = {}
    for qid, row_scores, row_idx in zip(query_ids, scores.tolist(), idx.tolist()):
        hits = {doc_ids[i]: s for s, i in zip(row_scores, row_idx) if not (ignore_identical_ids and doc_ids[i] == qid)}
        run[qid] = dict(list(hits.items())[:top_k])
    return run


def evaluate_retrieval(
    embedder: Embedder,
    queries: Mapping[str, str],
    corpus: Mapping[str, Mapping[str, str] | str],
    qrels: Mapping[str, Mapping[str, int]],
    instruction: str | None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    top_k: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    ignore_identical_ids: bool = False,
    show_progress_bar: bool | None = None,
    device: str | torch.device | None = None,
) -> RetrievalResult:
    """Search the queries of `qrels` in `corpus` and score the run with `retrieval_metrics`.

    `top_k` defaults to `max(k_values)`. Queries with no qrels entry at all are skipped (as MTEB
    does); each remaining query counts, see :func:`e5mistral.evaluation.metrics.retrieval_metrics`.

    Example:

    ```python
    >>> result = evaluate_retrieval(embedder, {"q1": "capital of France"},
    ...                             {"d1": {"title": "Paris", "text": "Paris is the capital."}},
    ...                             {"q1": {"d1": 1}}, instruction="question_answering")
    >>> result.metrics["ndcg@10"]
    1.0
    ```
    """
    qrels = {qid: dict(judged) for qid, judged in qrels.items() if judged}
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise ValueError(
            f"{len(missing)} qrels queries have no text in `queries` (e.g. {missing[0]!r}); pass the matching queries."
        )
    top_k = top_k or max(k_values)
    run = search(
        embedder,
        {qid: queries[qid] for qid in qrels},
        corpus,
        instruction,
        top_k,
        block_size,
        ignore_identical_ids,
        show_progress_bar,
        device,
    )
    metrics = retrieval_metrics(run, qrels, k_values)
    return RetrievalResult(metrics=metrics, run=run, num_queries=len(qrels), num_documents=len(corpus))


def evaluate_beir(
    embedder: Embedder,
    folder: str | Path,
    instruction: str | None,
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    top_k: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    ignore_identical_ids: bool = False,
    show_progress_bar: bool | None = None,
    device: str | torch.device | None = None,
) -> RetrievalResult:
    """Load a BEIR folder (:func:`load_beir`) and evaluate it (:func:`evaluate_retrieval`)."""
    data = load_beir(folder, split)
    return evaluate_retrieval(
        embedder,
        data.queries,
        data.corpus,
        data.qrels,
        instruction,
        k_values,
        top_k,
        block_size,
        ignore_identical_ids,
        show_progress_bar,
        device,
    )
