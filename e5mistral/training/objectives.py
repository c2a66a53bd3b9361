"""Loss options beyond the recipe (issue #15), each off by default: the recipe is :func:`info_nce`.

Three options, combinable, all computed from one set of (possibly gathered, possibly GradCache-
cached) embeddings, so one backward serves them all:

- **directions** (GTE, Qwen3-Embedding's "improved contrastive loss"): besides query -> document,
  the softmax of query ``i`` may hold query -> query (``s(q_i, q_j)``, ``j != i``),
  document -> query (``s(d_i, q_j)``, the positive pair included) and document -> document
  (``s(d_i, d_k)``, the documents of row ``i`` itself excluded) scores; the positive is always
  ``s(q_i, d_i)``. ``partition="joint"`` puts every term in one denominator,
  ``"per_direction"`` averages one log-partition per direction (query -> document and
  document -> query only: the other two hold no positive). The names are those of
  sentence-transformers' ``MultipleNegativesRankingLoss(directions=...)``, whose losses these equal
  on the same embeddings (tests/test_objectives.py).
- **Matryoshka** (Kusupati et al., 2022): the loss at each prefix length ``dims[k]`` of the
  embeddings (each prefix re-normalised), weighted and summed.
- **hard-negatives-only rows** (SFR-Embedding): a ``restricted`` row is scored against its own
  positive and its own hard negatives only: no in-batch, cross-device or extra-direction terms
  (under ``per_direction`` its loss is its query -> document term alone).

False negatives are masked in every term, by text id (:func:`~e5mistral.training.loss.text_ids`):
with ``p_i`` the id of row ``i``'s positive and ``u_i`` of its query,

- query -> document, document -> document: a document whose id is ``p_i`` (a copy of the positive;
  the positive itself stays in query -> document);
- query -> query, document -> query: a query ``j`` with ``p_j == p_i`` (it has the same positive),
  ``u_j == u_i`` (a copy of the query) or ``u_j == p_i``; query ``i`` itself stays in
  document -> query (it is the positive pair seen from the document).

Layout (one process; :func:`gather_batch` concatenates the processes' blocks in rank order)::

    queries       (Q, H)   all queries; the local ones are rows q_offset .. q_offset + B - 1
    documents     (D, H)   per process: its rows' positives, then their hard negatives (the collator's)
    labels        (B,)     index in documents of each local query's positive
    document_rows (D,)     the global query row each document belongs to
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from e5mistral.training.loss import cosine_scores, gather_documents, gather_ids

__all__ = [
    "DIRECTIONS",
    "PARTITIONS",
    "Batch",
    "batch_row_ids",
    "check_dims",
    "check_tasks",
    "contrastive_loss",
    "gather_batch",
    "loss_for_args",
    "options_in_use",
]

logger = logging.getLogger(__name__)

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITIONS = ("joint", "per_direction")


@dataclass
class Batch:
    """The embeddings and ids one loss call sees (see the module docstring for the layout).

    ``query_ids`` (Q,), ``query_positive_ids`` (Q,) and ``document_ids`` (D,) are text ids;
    ``q_offset`` is the index in ``queries`` of the first local query.
    """

    queries: Tensor  # (Q, H)
    documents: Tensor  # (D, H)
    labels: Tensor  # (B,)
    q_offset: int
    query_ids: Tensor  # (Q,)
    query_positive_ids: Tensor  # (Q,)
    document_ids: Tensor  # (D,)
    document_rows: Tensor  # (D,)


def batch_row_ids(num_queries: int, num_negatives_per_row: Sequence[int]) -> Tensor:
    """The row each document of the collator's layout belongs to: ``(B + M,)``.

    Example:
        >>> batch_row_ids(2, [1, 0]).tolist()   # p0, p1, n0
        [0, 1, 0]
    """
    owners = [row for row, count in enumerate(num_negatives_per_row) for _ in range(count)]
    return torch.tensor(list(range(num_queries)) + owners, dtype=torch.long)


def gather_batch(
    queries: Tensor,
    documents: Tensor,
    query_ids: Tensor,
    document_ids: Tensor,
    document_rows: Tensor,
    gather: bool,
) -> Batch:
    """One process's queries (B, H) and documents (D_r, H), with every process's when ``gather``.

    Gradients flow back to each block's owner (:func:`~e5mistral.training.loss.gather_documents`);
    the local rows' labels and the documents' row indices are shifted to the gathered layout.

    Example (one process: nothing to gather):
        >>> q, d = torch.randn(2, 4), torch.randn(3, 4)   # 2 rows; p0, p1, n0
        >>> b = gather_batch(q, d, torch.tensor([7, 8]), torch.tensor([0, 1, 2]), batch_row_ids(2, [1, 0]), True)
        >>> b.labels.tolist(), b.q_offset, b.query_positive_ids.tolist(), b.document_rows.tolist()
        ([0, 1], 0, [0, 1], [0, 1, 0])
    """
    num_queries = queries.shape[0]
    positive_ids = document_ids[:num_queries]  # (B,) the collator puts the positives first
    q_offset, d_offset = 0, 0
    if gather:
        queries, query_ids, q_offset = gather_documents(queries, query_ids)  # (Q, H), (Q,)
        documents, document_ids, d_offset = gather_documents(documents, document_ids)  # (D, H), (D,)
        positive_ids = gather_ids(positive_ids)  # (Q,)
        document_rows = gather_ids(document_rows + q_offset)  # (D,) global rows
    labels = d_offset + torch.arange(num_queries, device=documents.device)  # (B,)
    return Batch(queries, documents, labels, q_offset, query_ids, positive_ids, document_ids, document_rows)


def _one_dim(
    batch: Batch,
    dim: int | None,
    temperature: float,
    directions: Sequence[str],
    partition: str,
    restricted: Tensor,
) -> tuple[Tensor, Tensor]:
    """The loss and accuracy of :func:`contrastive_loss` at one prefix length (None: all of it)."""
    cut = (lambda x: x) if dim is None else (lambda x: x[:, :dim])
    num_queries = batch.labels.shape[0]
    rows = torch.arange(num_queries, device=batch.labels.device)  # (B,)
    own = batch.q_offset + rows  # (B,) each local row's index among all queries
    local_queries = cut(batch.queries)[own]  # (B, h)
    positives = cut(batch.documents)[batch.labels]  # (B, h)
    p = batch.document_ids[batch.labels]  # (B,) ids of the positives
    u = batch.query_ids[own]  # (B,) ids of the queries
    foreign_doc = batch.document_rows.unsqueeze(0) != own.unsqueeze(1)  # (B, D) not row i's documents
    restrict = restricted.unsqueeze(1)  # (B, 1)

    # query-candidate false negatives, shared by query -> query and document -> query: (B, Q)
    same_pair = (
        (batch.query_positive_ids.unsqueeze(0) == p.unsqueeze(1))
        | (batch.query_ids.unsqueeze(0) == u.unsqueeze(1))
        | (batch.query_ids.unsqueeze(0) == p.unsqueeze(1))
    )
    self_query = torch.zeros_like(same_pair)
    self_query[rows, own] = True  # (B, Q)
    copy_of_positive = batch.document_ids.unsqueeze(0) == p.unsqueeze(1)  # (B, D)
    is_positive = torch.zeros_like(copy_of_positive)
    is_positive[rows, batch.labels] = True  # (B, D)

    terms: dict[str, tuple[Tensor, Tensor]] = {}  # name -> (scores (B, C), masked (B, C))
    terms["query_to_doc"] = (
        cosine_scores(local_queries, cut(batch.documents), temperature),
        (copy_of_positive & ~is_positive) | (restrict & foreign_doc),
    )
    if "query_to_query" in directions:
        terms["query_to_query"] = (
            cosine_scores(local_queries, cut(batch.queries), temperature),
            same_pair | self_query | restrict,
        )
    if "doc_to_query" in directions:
        terms["doc_to_query"] = (
            cosine_scores(positives, cut(batch.queries), temperature),
            (same_pair & ~self_query) | restrict,
        )
    if "doc_to_doc" in directions:
        terms["doc_to_doc"] = (
            cosine_scores(positives, cut(batch.documents), temperature),
            ~foreign_doc | copy_of_positive | restrict,
        )
    masked_scores = {}
    for name, (scores, masked) in terms.items():
        masked_scores[name] = scores.masked_fill(masked, torch.finfo(scores.dtype).min)  # (B, C)
    query_to_doc = masked_scores["query_to_doc"]  # (B, D)
    positive = query_to_doc[rows, batch.labels]  # (B,)
    if partition == "joint":
        log_z = torch.logsumexp(torch.cat(list(masked_scores.values()), dim=1), dim=1)  # (B,)
    else:  # per_direction: restricted rows keep query -> document only
        total = torch.logsumexp(query_to_doc, dim=1)  # (B,)
        count = torch.ones_like(total)
        for name, scores in masked_scores.items():
            if name != "query_to_doc":
                keep = (~restricted).to(total.dtype)  # (B,)
                total = total + keep * torch.logsumexp(scores, dim=1)
                count = count + keep
        log_z = total / count  # (B,)
    loss = (log_z - positive).mean()
    accuracy = (query_to_doc.argmax(dim=-1) == batch.labels).float().mean().detach()
    return loss, accuracy


def contrastive_loss(
    batch: Batch,
    temperature: float = 0.02,
    directions: Sequence[str] = ("query_to_doc",),
    partition: str = "joint",
    matryoshka_dims: Sequence[int] | None = None,
    matryoshka_weights: Sequence[float] | None = None,
    restricted: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """InfoNCE with the options of the module docstring; ``(loss, accuracy)`` as :func:`info_nce`.

    Args:
        batch: the embeddings and ids (:func:`gather_batch`).
        temperature: tau; scores are cosine / tau.
        directions: names from :data:`DIRECTIONS`; ``query_to_doc`` must be among them.
        partition: ``joint`` or ``per_direction`` (:data:`PARTITIONS`).
        matryoshka_dims: prefix lengths; None: the whole embedding only. Each prefix is
            re-normalised; losses are summed with ``matryoshka_weights`` (default 1 each).
        restricted: (B,) bool, rows scored against their own positive and hard negatives only.

    Returns:
        the weighted sum of the per-dimension losses and the accuracy at the first (largest) dimension.

    Example:
        >>> q, d = torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> b = Batch(q, d, torch.arange(2), 0, torch.tensor([10, 11]), torch.tensor([0, 1]),
        ...           torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0]))
        >>> loss, acc = contrastive_loss(b, 0.05, directions=("query_to_doc", "query_to_query"))
        >>> round(loss.item(), 4), acc.item()
        (0.0029, 1.0)
    """
    if restricted is None:
        restricted = torch.zeros(batch.labels.shape[0], dtype=torch.bool, device=batch.labels.device)
    if matryoshka_dims:  # largest first (its accuracy is reported), each weight with its dim
        weights = matryoshka_weights or [1.0] * len(matryoshka_dims)
        pairs = sorted(zip(matryoshka_dims, weights), key=lambda dim_weight: -dim_weight[0])
    else:
        pairs = [(None, 1.0)]
    total, accuracy = None, None
    for dim, weight in pairs:
        loss, acc = _one_dim(batch, dim, temperature, directions, partition, restricted)
        total = weight * loss if total is None else total + weight * loss
        accuracy = acc if accuracy is None else accuracy
    return total, accuracy


def options_in_use(args) -> dict:
    """The loss options of ``args`` (E5TrainingArguments) that leave the recipe, ``{field: value}``.

    Example:
        >>> from types import SimpleNamespace
        >>> options_in_use(SimpleNamespace(loss_directions=["query_to_doc"], loss_partition="joint",
        ...     matryoshka_dims=[8, 4], matryoshka_weights=None, hard_negatives_only_tasks=None))
        {'matryoshka_dims': [8, 4]}
    """
    used = {}  # arguments without these fields (a plain TrainingArguments) use none of them
    directions = list(getattr(args, "loss_directions", None) or ["query_to_doc"])
    if directions != ["query_to_doc"]:
        used["loss_directions"] = directions
        used["loss_partition"] = args.loss_partition
    for name in ("matryoshka_dims", "matryoshka_weights", "hard_negatives_only_tasks"):
        if getattr(args, name, None):
            used[name] = list(getattr(args, name))
    return used


def check_dims(args, config) -> None:
    """Refuse ``matryoshka_dims`` / ``truncate_dim`` over the model's embedding size (one line)."""
    from e5mistral.errors import UserError

    hidden = getattr(config, "hidden_size", None)
    too_big = [d for d in (args.matryoshka_dims or []) if hidden and d > hidden]
    if too_big:
        raise UserError(
            f"matryoshka_dims={args.matryoshka_dims}: {too_big} exceed the model's embedding size {hidden}; "
            f"use sizes <= {hidden} (and include {hidden} itself)."
        )
    if args.matryoshka_dims and hidden and hidden not in args.matryoshka_dims:
        logger.warning(
            f"matryoshka_dims={args.matryoshka_dims} leaves out the full size {hidden}: full embeddings are not "
            f"trained; add {hidden} unless every user truncates."
        )
    if args.truncate_dim is not None and args.truncate_dim not in (args.matryoshka_dims or [hidden]):
        logger.warning(
            f"truncate_dim={args.truncate_dim} is not among the trained sizes {args.matryoshka_dims or [hidden]}: "
            "loaders will keep a prefix this run did not train; add it to matryoshka_dims."
        )
    if args.truncate_dim is not None and hidden and args.truncate_dim > hidden:
        raise UserError(
            f"truncate_dim={args.truncate_dim} exceeds the model's embedding size {hidden}; use <= {hidden}."
        )


def check_tasks(args, dataset) -> None:
    """Warn when ``hard_negatives_only_tasks`` names tasks no training row has (a typo trains the recipe)."""
    if not args.hard_negatives_only_tasks or dataset is None or "task" not in getattr(dataset, "column_names", []):
        return
    present = set(dataset.unique("task")) if hasattr(dataset, "unique") else set(dataset["task"])
    absent = [t for t in args.hard_negatives_only_tasks if t not in present]
    if absent:
        shown = sorted(map(str, present))[:10]
        logger.warning(
            f"hard_negatives_only_tasks: no training row has task {absent}; the rows' tasks are {shown}"
            f"{' ...' if len(present) > 10 else ''}. Those names change nothing: check their spelling."
        )


def loss_for_args(args, queries: Tensor, documents: Tensor, inputs: dict, gather: bool) -> tuple[Tensor, Tensor]:
    """:func:`contrastive_loss` with ``args``'s options on the collator's batch ``inputs``.

    ``queries`` (B, H) and ``documents`` (D, H) are this process's embeddings; ``inputs`` holds
    ``document_ids``, ``query_ids``, ``document_rows`` and ``task_ids`` (:class:`E5Collator`).

    Example:
        >>> # in E5Trainer.compute_loss, on the (possibly GradCache-cached) embeddings of a batch:
        >>> # loss, accuracy = loss_for_args(self.args, queries, documents, inputs, gather=True)
    """
    from e5mistral.errors import UserError
    from e5mistral.training.loss import text_ids

    missing = [key for key in ("document_ids", "query_ids", "document_rows", "task_ids") if key not in inputs]
    if missing:
        raise UserError(
            f"the loss options {sorted(options_in_use(args))} need the batch keys {missing}, which the data "
            "collator did not produce; use E5Collator (or add them: see its docstring)."
        )
    batch = gather_batch(
        queries, documents, inputs["query_ids"], inputs["document_ids"], inputs["document_rows"], gather
    )
    restricted = None
    if args.hard_negatives_only_tasks:
        listed = text_ids(args.hard_negatives_only_tasks).to(inputs["task_ids"].device)
        restricted = torch.isin(inputs["task_ids"], listed)  # (B,)
    return contrastive_loss(
        batch,
        args.temperature,
        args.loss_directions,
        args.loss_partition,
        args.matryoshka_dims,
        args.matryoshka_weights,
        restricted,
    )
