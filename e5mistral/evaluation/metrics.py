"""Retrieval metrics as pure functions: nDCG@k, MRR@k, Recall@k, MAP@k, Precision@k.

This is the project's single implementation of the ranking metrics. The retrieval evaluator
(`e5mistral.evaluation.retrieval`), the `evaluate` metric module
(`e5mistral/evaluation/retrieval_metric/`) and the trainer's in-training evaluation all call
`retrieval_metrics` from here.

Definitions follow `trec_eval` (and therefore `pytrec_eval`, BEIR and MTEB), and the tests check
every value against `pytrec_eval` to 1e-6:

- Ranking: documents are sorted by score descending; **ties are broken by document id
  descending** (plain string comparison), which is what `trec_eval` does and what MTEB's MRR
  code copies. A run that needs another order for tied documents must give them distinct scores.
- Relevant: a qrels grade `>= 1`. Grades `<= 0` are judged non-relevant.
- nDCG@k: gain = the grade (negative grades count as 0), discount `log2(rank + 1)` with ranks
  from 1; the ideal ranking is all judged grades sorted descending, cut at k.
- MRR@k: 1 / rank of the first relevant document within the top k, else 0.
- Recall@k: relevant documents in the top k / all relevant documents of the query.
- MAP@k (`trec_eval`'s `map_cut`): sum of precision at the rank of each relevant document within
  the top k, divided by all relevant documents of the query (not by min(k, R)).
- Precision@k: relevant documents in the top k / k (even when fewer than k were retrieved).

Averaging: the mean over the queries of `qrels`. A query with no relevant document scores 0 (as in
`trec_eval`); a query of `qrels` missing from `run` scores 0 (pytrec_eval would silently drop it,
which inflates scores); queries of `run` that are not in `qrels` are ignored.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["DEFAULT_K_VALUES", "METRIC_NAMES", "per_query_metrics", "rank_documents", "retrieval_metrics"]

DEFAULT_K_VALUES: tuple[int, ...] = (1, 3, 5, 10, 100)
METRIC_NAMES: tuple[str, ...] = ("ndcg", "mrr", "recall", "map", "precision")


def rank_documents(doc_scores: Mapping[str, float], top_k: int | None = None) -> list[str]:
    """Return document ids best first: score descending, ties by document id descending.

    Example:
        >>> rank_documents({"a": 0.5, "b": 0.9, "c": 0.5})
        ['b', 'c', 'a']
        >>> rank_documents({"a": 0.5, "b": 0.9, "c": 0.5}, top_k=2)
        ['b', 'c']
    """
    key = lambda item: (item[1], item[0])
    if top_k is None or top_k >= len(doc_scores):
        ranked = sorted(doc_scores.items(), key=key, reverse=True)
    else:
        ranked = heapq.nlargest(top_k, doc_scores.items(), key=key)
    for doc_id, score in ranked:
        if isinstance(score, float) and math.isnan(score):
            raise ValueError(f"run score for document {doc_id!r} is NaN; fix the scores before evaluating.")
    return [doc_id for doc_id, _ in ranked]


def _check_k_values(k_values: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(sorted(set(k_values)))
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"k_values must be positive integers, got {tuple(k_values)!r}; e.g. k_values=(1, 10, 100).")
    return ks


def _query_metrics(doc_scores: Mapping[str, float], judged: Mapping[str, int], ks: Sequence[int]) -> dict[str, float]:
    """Metrics of one query; `ks` sorted ascending and validated."""
    ranked = rank_documents(doc_scores, top_k=ks[-1])
    grades = [judged.get(doc_id, 0) for doc_id in ranked]
    num_relevant = sum(1 for grade in judged.values() if grade >= 1)
    ideal = sorted((max(grade, 0) for grade in judged.values()), reverse=True)

    out: dict[str, float] = {}
    dcg = idcg = precision_sum = 0.0
    hits = 0
    first_hit_rank = 0  # 0: no relevant document seen yet
    pos = 0  # ranks 1..pos already accumulated
    for k in ks:
        for rank in range(pos + 1, k + 1):  # ranks start at 1
            discount = math.log2(rank + 1)
            if rank <= len(grades):
                grade = grades[rank - 1]
                dcg += max(grade, 0) / discount
                if grade >= 1:
                    hits += 1
                    precision_sum += hits / rank
                    first_hit_rank = first_hit_rank or rank
            if rank <= len(ideal):
                idcg += ideal[rank - 1] / discount
        pos = k
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
        out[f"mrr@{k}"] = 1.0 / first_hit_rank if first_hit_rank else 0.0
        out[f"recall@{k}"] = hits / num_relevant if num_relevant else 0.0
        out[f"map@{k}"] = precision_sum / num_relevant if num_relevant else 0.0
        out[f"precision@{k}"] = hits / k
    return out


def per_query_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Iterable[int] = DEFAULT_K_VALUES,
) -> dict[str, dict[str, float]]:
    """Metrics of every query of `qrels`, keyed by query id then by metric name ("ndcg@10", ...).

    Example:
        >>> run = {"q1": {"d1": 0.9, "d2": 0.1}}
        >>> qrels = {"q1": {"d2": 1}}
        >>> per_query_metrics(run, qrels, k_values=(1, 2))["q1"]["mrr@2"]
        0.5
    """
    ks = _check_k_values(k_values)
    return {qid: _query_metrics(run.get(qid, {}), judged, ks) for qid, judged in qrels.items()}


def retrieval_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Iterable[int] = DEFAULT_K_VALUES,
) -> dict[str, float]:
    """Mean nDCG@k, MRR@k, Recall@k, MAP@k and Precision@k over the queries of `qrels`.

    Args:
        run: query id -> {document id: score}; higher scores rank first (ties: see module doc).
        qrels: query id -> {document id: graded relevance}; grade >= 1 is relevant.
        k_values: cut-offs; every metric is reported at each.

    Returns:
        {"ndcg@10": ..., "mrr@10": ..., "recall@10": ..., "map@10": ..., "precision@10": ..., ...}
        for every k, as Python floats in [0, 1].

    Example:
        >>> run = {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.1}, "q2": {"d1": 0.2, "d3": 0.7}}
        >>> qrels = {"q1": {"d2": 1}, "q2": {"d3": 2}}
        >>> m = retrieval_metrics(run, qrels, k_values=(1, 10))
        >>> m["mrr@10"], m["recall@1"]
        (0.75, 0.5)
    """
    if not qrels:
        raise ValueError("qrels is empty: there is no query to evaluate; pass at least one judged query.")
    ks = _check_k_values(k_values)
    per_query = per_query_metrics(run, qrels, ks)
    names = [f"{name}@{k}" for k in ks for name in METRIC_NAMES]
    return {name: math.fsum(scores[name] for scores in per_query.values()) / len(per_query) for name in names}
