"""Evaluation: retrieval metrics, BEIR folders and exact search, STS / classification, and the MTEB wrapper.

``retrieval_metrics`` is the one implementation of nDCG/MRR/Recall/MAP@k (checked against
pytrec_eval); the `evaluate` module at ``RETRIEVAL_METRIC_PATH`` and the trainer both call it.
The MTEB wrapper lives in ``e5mistral.evaluation.mteb`` and is not imported here (mteb is slow to
import).

Example:

```python
>>> import evaluate
>>> from e5mistral.evaluation import RETRIEVAL_METRIC_PATH, retrieval_metrics
>>> retrieval_metrics({"q": {"d1": 0.9, "d2": 0.1}}, {"q": {"d2": 1}}, k_values=(10,))["mrr@10"]
0.5
>>> metric = evaluate.load(RETRIEVAL_METRIC_PATH)
```
"""

from pathlib import Path

from .beir import BEIR_INSTRUCTIONS, BeirDataset, load_beir
from .metrics import DEFAULT_K_VALUES, per_query_metrics, rank_documents, retrieval_metrics
from .retrieval import (
    RetrievalResult,
    SearchSettings,
    evaluate_beir,
    evaluate_retrieval,
    exact_search,
    search,
)
from .sts import classification_accuracy, sts_correlation

# evaluate.load(path) reads <path>/<folder name>.py
RETRIEVAL_METRIC_PATH: str = str(Path(__file__).parent / "retrieval_metric")

__all__ = [
    "BEIR_INSTRUCTIONS",
    "DEFAULT_K_VALUES",
    "RETRIEVAL_METRIC_PATH",
    "BeirDataset",
    "RetrievalResult",
    "SearchSettings",
    "classification_accuracy",
    "evaluate_beir",
    "evaluate_retrieval",
    "exact_search",
    "load_beir",
    "per_query_metrics",
    "rank_documents",
    "retrieval_metrics",
    "search",
    "sts_correlation",
]
