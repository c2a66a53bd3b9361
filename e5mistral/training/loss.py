"""InfoNCE over in-batch, hard and cross-device negatives, as pure functions.

The recipe's objective: each query is scored by cosine similarity / temperature against every
document of the batch (all positives and all hard negatives), and cross-entropy picks its own
positive. With several processes, the documents of every process join the candidates.

Document layout, on one process, for B queries whose rows carry M hard negatives in all::

    documents = [positive_0, ..., positive_{B-1}, negative_0, ..., negative_{M-1}]   # (B + M, H)
    labels    = [0, 1, ..., B-1]                                                     # (B,)

After :func:`gather_documents`, the blocks of all processes are concatenated in rank order, so
the label of local query ``i`` on rank ``r`` is ``offset + i`` where ``offset`` is the number of
documents held by ranks ``0 .. r-1``. Ranks may hold different numbers of documents (rows have
0..k hard negatives); the gather pads and un-pads, so the labels stay right.

False negatives: :func:`info_nce` takes an integer id per document text (:func:`text_ids`); a
candidate whose text equals the query's own positive is masked out of the softmax (except the
positive itself), so a duplicated positive is never pushed away.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_scores", "gather_documents", "gather_ids", "info_nce", "text_ids"]


def text_ids(texts: Sequence[str]) -> Tensor:
    """A stable 63-bit integer id per text (equal texts, equal ids; the same on every process).

    Python's ``hash`` is salted per process, so it cannot compare texts across ranks.

    Example:
        >>> ids = text_ids(["a", "b", "a"])
        >>> ids.dtype, bool(ids[0] == ids[2]), bool(ids[0] == ids[1])
        (torch.int64, True, False)
    """
    ids = [int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little") >> 1 for t in texts]
    return torch.tensor(ids, dtype=torch.long)


def info_nce(
    query_embeddings: Tensor,
    document_embeddings: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.02,
    document_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """InfoNCE of each query against all documents: ``cross_entropy(cos(q, d) / temperature)``.

    Args:
        query_embeddings: (B, H) query embeddings (normalised here; already-normalised is fine).
        document_embeddings: (D, H) candidate documents: positives and hard negatives, possibly
            from every process.
        labels: (B,) index in ``document_embeddings`` of each query's positive; default
            ``arange(B)`` (positives first, as the collator lays them out).
        temperature: the softmax temperature tau (recipe: 0.02); must be > 0. Scores are
            computed in float32 (autocast off), so bf16 training neither overflows nor rounds
            the ``1 / temperature`` scaling.
        document_ids: (D,) text ids (:func:`text_ids`); when given, a candidate with the same id
            as the query's positive (a duplicate of it) is masked out.

    Returns:
        ``(loss, accuracy)``: the mean loss over the B queries (scalar, differentiable) and the
        share of queries whose positive scores highest (scalar, detached).

    Example:
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # two positives, one negative
        >>> loss, acc = info_nce(q, d, temperature=0.05)
        >>> round(loss.item(), 4), acc.item()
        (0.0029, 1.0)
    """
    if not temperature > 0:  # also refuses NaN
        raise ValueError(f"temperature must be > 0, got {temperature}; the recipe uses 0.02.")
    num_queries = query_embeddings.shape[0]
    if labels is None:
        labels = torch.arange(num_queries, device=query_embeddings.device)
    scores = cosine_scores(query_embeddings, document_embeddings, temperature)  # (B, D)
    if document_ids is not None:
        positive_ids = document_ids[labels]  # (B,)
        duplicate = document_ids.unsqueeze(0) == positive_ids.unsqueeze(1)  # (B, D)
        duplicate[torch.arange(num_queries, device=labels.device), labels] = False  # keep the positive itself
        scores = scores.masked_fill(duplicate, torch.finfo(scores.dtype).min)  # (B, D)
    loss = F.cross_entropy(scores, labels)  # float32 softmax, also under bf16 autocast
    accuracy = (scores.argmax(dim=-1) == labels).float().mean().detach()
    return loss, accuracy


def cosine_scores(anchors: Tensor, candidates: Tensor, temperature: float) -> Tensor:
    """``cos(anchor, candidate) / temperature``: (A, H) x (C, H) -> (A, C), in float32 with autocast off.

    Under bf16 autocast the matmul would round cosines to 2^-8, which 1/temperature (50x at 0.02,
    1000x at 0.001) turns into logit errors of 0.2..4.

    Example:
        >>> cosine_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]]), 0.5)
        tensor([[2., 0.]])
    """
    dtype = torch.promote_types(anchors.dtype, torch.float32)
    with torch.autocast(anchors.device.type, enabled=False):
        anchors = F.normalize(anchors.to(dtype), dim=-1)  # (A, H)
        candidates = F.normalize(candidates.to(dtype), dim=-1)  # (C, H)
        return anchors @ candidates.T / temperature  # (A, C)


def gather_ids(ids: Tensor, counts: list[int] | None = None) -> Tensor:
    """All processes' 1-D integer tensors (``ids``, lengths may differ) concatenated in rank order.

    ``counts`` (every process's length, in rank order) saves the collective that learns them when
    the caller already has them. Without a process group (or with one process), ``ids`` itself.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    if counts is None:
        count = torch.tensor([ids.shape[0]], device=ids.device)
        gathered = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, count)
        counts = [int(c.item()) for c in gathered]
    padded = F.pad(ids, (0, max(counts) - ids.shape[0]), value=-1)  # (width,)
    blocks = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(blocks, padded)
    return torch.cat([block[:n] for block, n in zip(blocks, counts)])  # (sum n,)


def gather_documents(
    document_embeddings: Tensor, document_ids: Tensor | None = None
) -> tuple[Tensor, Tensor | None, int]:
    """All processes' documents in rank order, with gradients flowing back to their owners.

    The backward sums the gradients that every process's loss sends to a block and hands the sum to
    the block's owner: each process's loss reaches the documents of the others,
    so 2 processes x batch B take the same step as 1 process x batch 2B. Ranks may hold different
    numbers of documents; blocks are padded for the collective and trimmed after.

    Without an initialised process group (or with one process) this returns the input unchanged.

    Args:
        document_embeddings: (D_r, H) this process's documents.
        document_ids: (D_r,) their text ids, or None.

    Returns:
        ``(all_embeddings (sum_r D_r, H), all_ids (sum_r D_r,) or None, offset)`` where ``offset``
        is the number of documents of lower ranks: add it to the local labels.

    Example (on 2 processes, rank 1, each with 3 documents):
        >>> # all_docs, all_ids, offset = gather_documents(docs, ids)   # (6, H), (6,), 3
        >>> # loss, acc = info_nce(queries, all_docs, offset + torch.arange(B), 0.02, all_ids)
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return document_embeddings, document_ids, 0
    rank, world_size = dist.get_rank(), dist.get_world_size()
    count = torch.tensor([document_embeddings.shape[0]], device=document_embeddings.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    width = max(counts)

    # torch's own differentiable gather (what the deprecated torch.distributed.nn.functional.all_gather
    # now points to); imported here because builds without torch.distributed lack the module.
    from torch.distributed._functional_collectives import all_gather_single

    padded = F.pad(document_embeddings, (0, 0, 0, width - counts[rank]))  # (width, H)
    # Its backward sums every process's gradient of each block and hands the sum to the block's owner.
    blocks = all_gather_single(padded, 0, dist.group.WORLD).split(width)  # world_size x (width, H)
    all_embeddings = torch.cat([block[:n] for block, n in zip(blocks, counts)])  # (sum D_r, H)

    all_ids = gather_ids(document_ids, counts) if document_ids is not None else None  # (sum D_r,)
    return all_embeddings, all_ids, sum(counts[:rank])

