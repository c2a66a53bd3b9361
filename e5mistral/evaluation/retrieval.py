"""Retrieval evaluation with exact, block-bounded top-k search, on any queries/corpus/qrels or a BEIR folder.

Queries are embedded with the task instruction (``Instruct: ...\\nQuery: ...``), documents bare
(:func:`~e5mistral.evaluation.beir.document_text`). BEIR folders are read by
:mod:`e5mistral.evaluation.beir` (its names are importable from here too).

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
>>> from e5mistral.evaluation.retrieval import SearchSettings, evaluate_beir
>>> embedder = E5Embedder.from_pretrained("out/my-e5")
>>> result = evaluate_beir(embedder, "data/scifact", instruction="scientific_claims",
...                        settings=SearchSettings(block_size=4096, device="cuda"))
>>> result.metrics["ndcg@10"]
```
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from .beir import BEIR_INSTRUCTIONS, BeirDataset, document_text, load_beir
from .metrics import DEFAULT_K_VALUES, retrieval_metrics

# BEIR_INSTRUCTIONS, BeirDataset, document_text and load_beir live in .beir; they are imported from here too.
__all__ = [
    "BEIR_INSTRUCTIONS",
    "DEFAULT_BLOCK_SIZE",
    "BeirDataset",
    "Embedder",
    "RetrievalResult",
    "SearchSettings",
    "document_text",
    "evaluate_beir",
    "evaluate_retrieval",
    "exact_search",
    "load_beir",
    "search",
]

DEFAULT_BLOCK_SIZE = 16384

class Embedder(Protocol):
    """What the evaluators need: :class:`e5mistral.E5Embedder` or anything shaped like it.

    Both methods return an `(N, D)` tensor of L2-normalised embeddings, rows in input order.
    """

    def encode_queries(self, queries: Sequence[str], instruction: str | None = None, **kwargs) -> torch.Tensor: ...

    def encode_documents(self, documents: Sequence[str], **kwargs) -> torch.Tensor: ...


@dataclass
class RetrievalResult:
    """`run`: query id -> {doc id: cosine score} (top_k per query); `metrics`: see `retrieval_metrics`."""

    metrics: dict[str, float]
    run: dict[str, dict[str, float]] = field(repr=False)
    num_queries: int = 0
    num_documents: int = 0


@dataclass(frozen=True)
class SearchSettings:
    """How :func:`search` (and so :func:`evaluate_retrieval` and :func:`evaluate_beir`) runs.

    Attributes:
        block_size: documents embedded and scored at once; memory is ``O(Q * (top_k + block_size))``.
        ignore_identical_ids: never return a document whose id equals the query id (BEIR's
            convention for sets such as ArguAna and Quora, whose queries are also in the corpus).
        show_progress_bar: passed to the embedder's ``encode_*`` calls (``None``: its default).
        device: where scores are computed (e.g. "cuda"; default: where the embedder returns
            embeddings, the CPU for ``E5Embedder``).

    Example:

    ```python
    >>> SearchSettings(block_size=4096, device="cuda")
    SearchSettings(block_size=4096, ignore_identical_ids=False, show_progress_bar=None, device='cuda')
    ```
    """

    block_size: int = DEFAULT_BLOCK_SIZE
    ignore_identical_ids: bool = False
    show_progress_bar: bool | None = None
    device: str | torch.device | None = None


def _settings(settings: SearchSettings | None, deprecated: Mapping[str, Any], caller: str) -> SearchSettings:
    """``settings``, or the old keywords (``block_size=``...) made into settings with a ``DeprecationWarning``."""
    if not deprecated:
        return settings if settings is not None else SearchSettings()
    unknown = sorted(set(deprecated) - {f.name for f in fields(SearchSettings)})
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword arguments {unknown}")
    if settings is not None:
        raise TypeError(f"{caller}(): pass settings= or the keywords {sorted(deprecated)}, not both.")
    warnings.warn(
        f"{caller}({', '.join(f'{k}=' for k in deprecated)}...) is deprecated; pass settings=SearchSettings(...).",
        DeprecationWarning,
        stacklevel=3,
    )
    return SearchSettings(**deprecated)


def _merge_top_k(
    best_scores: torch.Tensor, best_idx: torch.Tensor, scores: torch.Tensor, offset: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one block of scores into the running top k, ties going to the lower corpus index.

    best_scores/best_idx: (Q, k0) in canonical order (score desc, index asc), all indices < offset.
    scores: (Q, B), the block's columns are corpus indices offset .. offset + B - 1.
    """
    k = min(top_k, scores.shape[1])
    # One more than needed: the (k+1)-th best equal to the k-th means more than k elements reach the k-th value,
    # and which of those topk keeps is unspecified. No (Q, B)-sized mask is built to find those rows.
    vals, cols = scores.topk(min(k + 1, scores.shape[1]), dim=1)  # (Q, k or k + 1)
    tied = vals[:, k] == vals[:, k - 1] if vals.shape[1] > k else vals.new_zeros(vals.shape[0], dtype=torch.bool)
    vals, cols = vals[:, :k], cols[:, :k]
    if tied.any():  # those rows: choose by stable sort instead
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
        del block, scores  # not held while the next block is embedded and scored: one block's memory at a time
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
    *,
    settings: SearchSettings | None = None,
    **deprecated: Any,
) -> dict[str, dict[str, float]]:
    """Embed queries (with `instruction`) and corpus (bare), return each query's top-k documents.

    `corpus` values are BEIR dicts (title, text) or plain strings. `settings` (a
    :class:`SearchSettings`) bound the memory, drop identical ids and pick the scoring device;
    the old keywords ``block_size=``, ``ignore_identical_ids=``, ``show_progress_bar=`` and
    ``device=`` are still accepted for one release (with a ``DeprecationWarning``).

    Returns:
        query id -> {doc id: cosine score}, at most `top_k` documents each.

    Example:

    ```python
    >>> run = search(embedder, {"q1": "capital of France"}, {"d1": "Paris is the capital.", "q1": "capital of France"},
    ...              "question_answering", top_k=1, settings=SearchSettings(ignore_identical_ids=True))
    >>> list(run["q1"])
    ['d1']
    ```
    """
    settings = _settings(settings, deprecated, "search")
    query_ids = list(queries)
    doc_ids = list(corpus)
    if not query_ids or not doc_ids:
        raise ValueError(f"search: got {len(query_ids)} queries and {len(doc_ids)} documents; both must be non-empty.")
    doc_texts = [doc if isinstance(doc, str) else document_text(doc) for doc in corpus.values()]
    q_emb = embedder.encode_queries(
        [queries[qid] for qid in query_ids], instruction=instruction, show_progress_bar=settings.show_progress_bar
    )  # (Q, D)
    if settings.device is not None:
        q_emb = q_emb.to(settings.device)  # exact_search moves each document block to the queries' device
    skip_own = settings.ignore_identical_ids
    blocks = _document_blocks(embedder, doc_texts, settings.block_size, settings.show_progress_bar)
    scores, idx = exact_search(q_emb, blocks, top_k + 1 if skip_own else top_k, settings.block_size)  # (Q, k)
    run: dict[str, dict[str, float]] = {}
    for qid, row_scores, row_idx in zip(query_ids, scores.tolist(), idx.tolist()):
        hits = {doc_ids[i]: s for s, i in zip(row_scores, row_idx) if not (skip_own and doc_ids[i] == qid)}
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
    *,
    settings: SearchSettings | None = None,
    **deprecated: Any,
) -> RetrievalResult:
    """Search the queries of `qrels` in `corpus` (:func:`search`) and score the run with `retrieval_metrics`.

    `top_k` defaults to `max(k_values)`; `settings` as in :func:`search`. Queries with no qrels
    entry at all are skipped (as MTEB does); each remaining query counts, see
    :func:`e5mistral.evaluation.metrics.retrieval_metrics`.

    Example:

    ```python
    >>> result = evaluate_retrieval(embedder, {"q1": "capital of France"},
    ...                             {"d1": {"title": "Paris", "text": "Paris is the capital."}},
    ...                             {"q1": {"d1": 1}}, instruction="question_answering")
    >>> result.metrics["ndcg@10"]
    1.0
    ```
    """
    settings = _settings(settings, deprecated, "evaluate_retrieval")
    qrels = {qid: dict(judged) for qid, judged in qrels.items() if judged}
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise ValueError(
            f"{len(missing)} qrels queries have no text in `queries` (e.g. {missing[0]!r}); pass the matching queries."
        )
    judged_queries = {qid: queries[qid] for qid in qrels}
    run = search(embedder, judged_queries, corpus, instruction, top_k or max(k_values), settings=settings)
    metrics = retrieval_metrics(run, qrels, k_values)
    return RetrievalResult(metrics=metrics, run=run, num_queries=len(qrels), num_documents=len(corpus))


def evaluate_beir(
    embedder: Embedder,
    folder: str | Path,
    instruction: str | None,
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    top_k: int | None = None,
    *,
    settings: SearchSettings | None = None,
    **deprecated: Any,
) -> RetrievalResult:
    """Load a BEIR folder (:func:`load_beir`) and evaluate it (:func:`evaluate_retrieval`).

    Example:

    ```python
    >>> evaluate_beir(embedder, "data/arguana", "argument_retrieval",
    ...               settings=SearchSettings(ignore_identical_ids=True, device="cuda")).metrics["ndcg@10"]
    ```
    """
    settings = _settings(settings, deprecated, "evaluate_beir")
    data = load_beir(folder, split)
    return evaluate_retrieval(
        embedder, data.queries, data.corpus, data.qrels, instruction, k_values, top_k, settings=settings
    )
