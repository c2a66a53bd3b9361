"""STS (cosine vs gold similarity) and nearest-label classification, for held-out synthetic data.

STS is symmetric, so, as in the recipe's MTEB evaluation, **both** sentences get the task
instruction (``encode_queries``). Classification embeds each input as a query with the
instruction and each label bare as a document, and predicts the label with the highest cosine.

The scoring parts are pure functions on embeddings (`sts_scores`, `nearest_label_predictions`),
so they can be tested without a model.

Example:

```python
>>> from e5mistral import E5Embedder
>>> embedder = E5Embedder.from_pretrained("out/my-e5")
>>> sts_correlation(embedder, ["a cat sits"], ["a cat is sitting"], [4.5], instruction="semantic_similarity")
>>> classification_accuracy(embedder, ["great film!"], ["positive"], instruction="classification",
...                         candidate_labels=["positive", "negative"])
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy.stats import pearsonr, spearmanr

from .retrieval import Embedder

__all__ = ["classification_accuracy", "nearest_label_predictions", "sts_correlation", "sts_scores"]


def sts_scores(embeddings1: torch.Tensor, embeddings2: torch.Tensor, gold_scores: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson correlation between row-wise cosine similarity and gold scores.

    Args:
        embeddings1, embeddings2: `(N, D)`; need not be normalised (cosine is computed here).
        gold_scores: `N` gold similarities (any scale; correlations are scale-free).

    Returns:
        {"spearman": float, "pearson": float, "num_pairs": N}; a correlation is NaN when either
        side is constant.

    Example:

    ```python
    >>> e1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    >>> e2 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> sts_scores(e1, e2, [5.0, 3.0, 0.0])["spearman"]
    1.0
    ```
    """
    gold = [float(s) for s in gold_scores]
    if embeddings1.shape != embeddings2.shape or embeddings1.ndim != 2:
        raise ValueError(
            f"sts_scores: embeddings must both be (N, D), got {tuple(embeddings1.shape)} and {tuple(embeddings2.shape)}."
        )
    if len(gold) != embeddings1.shape[0]:
        raise ValueError(
            f"sts_scores: {embeddings1.shape[0]} pairs but {len(gold)} gold scores; give one score per pair."
        )
    if len(gold) < 2:
        raise ValueError(f"sts_scores: need at least 2 pairs for a correlation, got {len(gold)}.")
    cosine = torch.nn.functional.cosine_similarity(embeddings1.double(), embeddings2.double(), dim=-1)  # (N,)
    cos = cosine.tolist()
    if len(set(cos)) < 2 or len(set(gold)) < 2:
        spearman = pearson = math.nan  # undefined for a constant input
    else:
        spearman = float(spearmanr(cos, gold).statistic)
        pearson = float(pearsonr(cos, gold).statistic)
    return {"spearman": spearman, "pearson": pearson, "num_pairs": len(gold)}


def sts_correlation(
    embedder: Embedder,
    sentences1: Sequence[str],
    sentences2: Sequence[str],
    gold_scores: Sequence[float],
    instruction: str | None = None,
    **encode_kwargs,
) -> dict[str, float]:
    """Embed both sides with `instruction` (STS is symmetric) and correlate cosine with gold."""
    if len(sentences1) != len(sentences2):
        raise ValueError(
            f"sts_correlation: {len(sentences1)} sentences1 but {len(sentences2)} sentences2; they must pair up."
        )
    emb1 = embedder.encode_queries(list(sentences1), instruction=instruction, **encode_kwargs)  # (N, D)
    emb2 = embedder.encode_queries(list(sentences2), instruction=instruction, **encode_kwargs)  # (N, D)
    return sts_scores(emb1, emb2, gold_scores)


def nearest_label_predictions(text_embeddings: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
    """Index of the most similar label for each text (dot product; pass normalised embeddings).

    Args:
        text_embeddings: `(N, D)`.
        label_embeddings: `(L, D)`.

    Returns:
        `(N,)` long tensor; on equal scores the lowest label index wins.

    Example:

    ```python
    >>> nearest_label_predictions(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.eye(2))
    tensor([0, 1])
    ```
    """
    scores = text_embeddings @ label_embeddings.T  # (N, L)
    best = scores.max(dim=1, keepdim=True).values  # (N, 1)
    # first column reaching the maximum (torch.argmax does not promise the first on ties)
    return (scores == best).int().argmax(dim=1) if scores.shape[1] else torch.empty(0, dtype=torch.long)


def classification_accuracy(
    embedder: Embedder,
    texts: Sequence[str],
    labels: Sequence[str],
    instruction: str | None = None,
    candidate_labels: Sequence[str] | None = None,
    **encode_kwargs,
) -> dict[str, float]:
    """Nearest-label accuracy: embed texts as queries and candidate labels as documents.

    Args:
        texts: inputs (the `input_text` of the long-short kind).
        labels: gold label of each text.
        instruction: the task definition, put on the text side.
        candidate_labels: the label set; defaults to the distinct gold labels, sorted.

    Returns:
        {"accuracy": float, "num_examples": N, "num_labels": L}.
    """
    if len(texts) != len(labels):
        raise ValueError(
            f"classification_accuracy: {len(texts)} texts but {len(labels)} labels; give one label per text."
        )
    if not texts:
        raise ValueError("classification_accuracy: no examples to evaluate.")
    candidates = list(candidate_labels) if candidate_labels is not None else sorted(set(labels))
    index = {label: i for i, label in enumerate(candidates)}
    unknown = [label for label in labels if label not in index]
    if unknown:
        raise ValueError(
            f"classification_accuracy: gold label {unknown[0]!r} is not in candidate_labels; add it or fix the data."
        )
    text_emb = embedder.encode_queries(list(texts), instruction=instruction, **encode_kwargs)  # (N, D)
    label_emb = embedder.encode_documents(candidates, **encode_kwargs)  # (L, D)
    predicted = nearest_label_predictions(text_emb, label_emb)  # (N,)
    gold = torch.tensor([index[label] for label in labels])  # (N,)
    accuracy = (predicted == gold).double().mean().item()
    return {"accuracy": accuracy, "num_examples": len(texts), "num_labels": len(candidates)}
