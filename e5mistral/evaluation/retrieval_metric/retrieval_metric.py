"""Retrieval metrics (nDCG@k, MRR@k, Recall@k, MAP@k, Precision@k) as an `evaluate` module.

A thin adapter: the numbers come from `e5mistral.evaluation.metrics.retrieval_metrics`, the
project's single implementation (checked against pytrec_eval), so `e5mistral` must be importable.

One example is one query. A prediction is the query's retrieved documents with their scores; a
reference is its judged documents with their grades (>= 1 is relevant):

    >>> import evaluate
    >>> from e5mistral.evaluation import RETRIEVAL_METRIC_PATH
    >>> metric = evaluate.load(RETRIEVAL_METRIC_PATH)
    >>> metric.compute(
    ...     predictions=[{"doc_ids": ["d1", "d2"], "scores": [0.9, 0.3]}],
    ...     references=[{"doc_ids": ["d2"], "relevance": [1]}],
    ...     k_values=[1, 10],
    ... )["mrr@10"]
    0.5
"""

import datasets
import evaluate

from e5mistral.evaluation.metrics import DEFAULT_K_VALUES, retrieval_metrics

_CITATION = """\
@inproceedings{van-gysel-2018-pytreceval,
  title={Pytrec\\_eval: An Extremely Fast Python Interface to trec\\_eval},
  author={Van Gysel, Christophe and de Rijke, Maarten},
  booktitle={SIGIR},
  year={2018}
}
"""

_DESCRIPTION = """\
Ranking metrics for retrieval with trec_eval's definitions (ties broken by document id
descending; grade >= 1 is relevant; nDCG gain is the grade). Reports ndcg@k, mrr@k, recall@k,
map@k and precision@k for every k in `k_values`, averaged over the examples (queries).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one dict per query, {"doc_ids": list[str], "scores": list[float]}; higher
        scores rank first.
    references: one dict per query, in the same order, {"doc_ids": list[str],
        "relevance": list[int]}.
    k_values: cut-offs (default 1, 3, 5, 10, 100).
Returns:
    dict[str, float] with keys "ndcg@10", "mrr@10", "recall@10", "map@10", "precision@10", ...
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "doc_ids": datasets.Sequence(datasets.Value("string")),
                        "scores": datasets.Sequence(datasets.Value("float64")),
                    },
                    "references": {
                        "doc_ids": datasets.Sequence(datasets.Value("string")),
                        "relevance": datasets.Sequence(datasets.Value("int64")),
                    },
                }
            ),
            reference_urls=["https://github.com/usnistgov/trec_eval"],
        )

    def _compute(self, predictions, references, k_values=DEFAULT_K_VALUES):
        if len(predictions) != len(references):
            raise ValueError(
                f"got {len(predictions)} predictions and {len(references)} references; "
                "pass one prediction and one reference per query, in the same order."
            )
        run, qrels = {}, {}
        for i, (pred, ref) in enumerate(zip(predictions, references)):
            for name, ids, values in (
                ("predictions", pred["doc_ids"], pred["scores"]),
                ("references", ref["doc_ids"], ref["relevance"]),
            ):
                if len(ids) != len(values):
                    raise ValueError(
                        f"{name}[{i}] has {len(ids)} doc_ids but {len(values)} scores/grades; "
                        "give one value per document id."
                    )
            qid = str(i)
            run[qid] = {doc_id: float(score) for doc_id, score in zip(pred["doc_ids"], pred["scores"])}
            qrels[qid] = {doc_id: int(grade) for doc_id, grade in zip(ref["doc_ids"], ref["relevance"])}
        return retrieval_metrics(run, qrels, tuple(int(k) for k in k_values))
