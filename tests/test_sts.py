"""STS correlations and nearest-label classification against independent numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from e5mistral.evaluation.sts import classification_accuracy, nearest_label_predictions, sts_correlation, sts_scores


def _ranks(x):
    """Average ranks (1-based), ties sharing the mean rank: the textbook Spearman input."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        ranks[x == value] = ranks[x == value].mean()
    return ranks


@pytest.mark.parametrize("seed", range(3))
def test_sts_scores_match_numpy(seed):
    g = torch.Generator().manual_seed(seed)
    e1, e2 = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)  # (N, D), not normalised
    gold = torch.randint(0, 6, (40,), generator=g).float().tolist()  # many ties in gold
    cos = (
        (torch.nn.functional.normalize(e1.double(), dim=-1) * torch.nn.functional.normalize(e2.double(), dim=-1))
        .sum(-1)
        .numpy()
    )
    result = sts_scores(e1, e2, gold)
    assert result["pearson"] == pytest.approx(np.corrcoef(cos, gold)[0, 1], rel=1e-9, abs=1e-12)
    assert result["spearman"] == pytest.approx(np.corrcoef(_ranks(cos), _ranks(gold))[0, 1], rel=1e-9, abs=1e-12)
    assert result["num_pairs"] == 40


def test_sts_scores_constant_and_errors():
    e = torch.ones(3, 2)
    assert math.isnan(sts_scores(e, e, [1.0, 2.0, 3.0])["spearman"])
    with pytest.raises(ValueError, match="gold scores"):
        sts_scores(e, e, [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        sts_scores(e[:1], e[:1], [1.0])


class RecordingEmbedder:
    """Embeds a text as a fixed vector looked up by its text; records instructions per side."""

    def __init__(self, table):
        self.table = table
        self.seen = []

    def encode_queries(self, queries, instruction=None, **kwargs):
        self.seen.append(("query", instruction))
        return torch.tensor([self.table[q] for q in queries])

    def encode_documents(self, documents, **kwargs):
        self.seen.append(("document", None))
        return torch.tensor([self.table[d] for d in documents])


def test_sts_correlation_instructs_both_sides():
    table = {"a": [1.0, 0.0], "b": [1.0, 0.1], "c": [0.0, 1.0], "d": [1.0, 1.0]}
    embedder = RecordingEmbedder(table)
    result = sts_correlation(embedder, ["a", "a", "a"], ["b", "d", "c"], [5.0, 2.5, 0.0], instruction="similar")
    assert result["spearman"] == pytest.approx(1.0)
    assert embedder.seen == [("query", "similar"), ("query", "similar")]


def test_classification_accuracy_and_tie_rule():
    table = {
        "good film": [1.0, 0.0],
        "bad film": [0.0, 1.0],
        "meh": [1.0, 1.0],
        "positive": [1.0, 0.0],
        "negative": [0.0, 1.0],
    }
    embedder = RecordingEmbedder(table)
    result = classification_accuracy(
        embedder, ["good film", "bad film", "meh"], ["positive", "positive", "negative"], instruction="sentiment"
    )
    # "meh" ties between the two labels: the first candidate ("negative", sorted) wins -> correct
    assert result == {"accuracy": pytest.approx(2 / 3), "num_examples": 3, "num_labels": 2}
    assert embedder.seen == [("query", "sentiment"), ("document", None)]
    assert nearest_label_predictions(torch.tensor([[1.0, 1.0]]), torch.eye(2)).tolist() == [0]
    with pytest.raises(ValueError, match="not in candidate_labels"):
        classification_accuracy(embedder, ["meh"], ["neutral"], candidate_labels=["positive", "negative"])
