"""The loss options across two real processes (gloo, CPU) equal one process with the whole batch.

Run as a worker script (``python tests/test_objectives_distributed.py --worker OUT``) by the test:
each process holds half the rows (rank 0's rows one hard negative each, rank 1's two, so the gather
pads), a positive duplicated across the ranks (the masks must see the other process's ids), and a
hard-negatives-only row on each rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from e5mistral.testing import assert_close, run_gloo_workers
from e5mistral.training.loss import text_ids
from e5mistral.training.objectives import batch_row_ids, contrastive_loss, gather_batch

H, TAU = 8, 0.05
OPTIONS = {
    "directions": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"),
    "partition": "joint",
    "matryoshka_dims": [8, 4],
    "matryoshka_weights": [1.0, 0.5],
}
NEGATIVES = {0: [1, 1, 1], 1: [2, 2, 2]}  # per rank, per row
RESTRICTED = {0: [False, True, False], 1: [True, False, False]}


def rank_data(rank: int):
    """Rank ``rank``'s rows: embeddings, texts and rows, the same in every process (seeded)."""
    g = torch.Generator().manual_seed(10 + rank)
    rows = len(NEGATIVES[rank])
    q = torch.randn(rows, H, generator=g, dtype=torch.float64)
    d = torch.randn(rows + sum(NEGATIVES[rank]), H, generator=g, dtype=torch.float64)
    query_texts = [f"q{rank}.{i}" for i in range(rows)]
    doc_texts = [f"p{rank}.{i}" for i in range(rows)] + [f"n{rank}.{k}" for k in range(sum(NEGATIVES[rank]))]
    doc_texts[0] = "shared positive"  # row 0 of both ranks
    return q, d, query_texts, doc_texts, batch_row_ids(rows, NEGATIVES[rank]), torch.tensor(RESTRICTED[rank])


def full_batch():
    """Both ranks' rows in one process, in the collator's layout (positives, then negatives)."""
    parts = [rank_data(r) for r in (0, 1)]
    rows = [p[0].shape[0] for p in parts]
    q = torch.cat([p[0] for p in parts])
    positives = [p[1][:n] for p, n in zip(parts, rows)]
    negatives = [p[1][n:] for p, n in zip(parts, rows)]
    d = torch.cat(positives + negatives)
    doc_texts = sum((p[3][:n] for p, n in zip(parts, rows)), []) + sum((p[3][n:] for p, n in zip(parts, rows)), [])
    owners = batch_row_ids(sum(rows), NEGATIVES[0] + NEGATIVES[1])
    query_texts = parts[0][2] + parts[1][2]
    restricted = torch.cat([parts[0][5], parts[1][5]])
    return q, d, query_texts, doc_texts, owners, restricted, rows


def _loss(q, d, query_texts, doc_texts, owners, restricted, gather):
    batch = gather_batch(q, d, text_ids(query_texts), text_ids(doc_texts), owners, gather)
    return contrastive_loss(batch, TAU, restricted=restricted, **OPTIONS)[0]


def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path: Path):
    run_gloo_workers(__file__, "--worker", str(tmp_path))

    q, d, query_texts, doc_texts, owners, restricted, rows = full_batch()
    q.requires_grad_(), d.requires_grad_()
    loss = _loss(q, d, query_texts, doc_texts, owners, restricted, gather=False)
    loss.backward()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # equal halves: the mean over all rows is the mean of the two processes' losses
    assert_close((results[0]["loss"] + results[1]["loss"]) / 2, loss, rtol=1e-10)
    # each process's embeddings get every process's loss gradient: d(L0 + L1) = 2 d(loss)
    positives = [d.grad[: rows[0]], d.grad[rows[0] : sum(rows)]]
    negatives = d.grad[sum(rows) :].split([sum(NEGATIVES[0]), sum(NEGATIVES[1])])
    for r in (0, 1):
        expected_q = q.grad[: rows[0]] if r == 0 else q.grad[rows[0] :]
        assert_close(results[r]["q_grad"], 2 * expected_q, rtol=1e-10, what=f"rank {r} query gradients")
        assert_close(results[r]["d_grad"], 2 * torch.cat([positives[r], negatives[r]]), rtol=1e-10)
    # rank 0's loss holds rank 1's candidates (alone, it would not)
    alone = _loss(*rank_data(0)[:5], rank_data(0)[5], gather=False)
    assert abs(alone.item() - results[0]["loss"].item()) > 1e-3


def _worker(out_dir: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    q, d, query_texts, doc_texts, owners, restricted = rank_data(rank)
    q.requires_grad_(), d.requires_grad_()
    loss = _loss(q, d, query_texts, doc_texts, owners, restricted, gather=True)
    loss.backward()
    torch.save({"loss": loss.detach(), "q_grad": q.grad, "d_grad": d.grad}, Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    from e5mistral.cli.common import exit_process

    _worker(sys.argv[2])
    exit_process(0)  # destroys the group; gloo's threads cannot abort the exit
