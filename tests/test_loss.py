"""InfoNCE, the duplicate mask and the cross-device gather, against independent computations.

The two-process test runs this file as a worker script (``python tests/test_loss.py --worker``)
in two real processes joined by torch.distributed (gloo, CPU), each taking one SGD step on its
half of the batch, and compares the weights with one process taking the step on the whole batch.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

from e5mistral.training.gradcache import grad_cache
from e5mistral.training.loss import gather_documents, info_nce, text_ids
from e5mistral.testing import assert_close, run_gloo_workers


def _manual_info_nce(q, d, labels, tau, excluded=()):
    """Loop-and-math oracle: -log softmax of cosine / tau, skipping excluded (query, doc) pairs."""
    losses = []
    for i in range(q.shape[0]):
        cos = [float(torch.dot(q[i], d[j]) / (q[i].norm() * d[j].norm())) for j in range(d.shape[0])]
        denominator = sum(math.exp(c / tau) for j, c in enumerate(cos) if (i, j) not in excluded)
        losses.append(-(cos[labels[i]] / tau - math.log(denominator)))
    return sum(losses) / len(losses)


def test_info_nce_equals_manual_softmax_over_positives_and_hard_negatives():
    torch.manual_seed(0)
    q, d = torch.randn(3, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)  # 3 positives + 4 negatives
    loss, accuracy = info_nce(q, d, temperature=0.1)
    assert loss.item() == pytest_approx(_manual_info_nce(q, d, [0, 1, 2], 0.1))
    expected_accuracy = (
        sum(
            int((nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(d, dim=-1).T)[i].argmax() == i)
            for i in range(3)
        )
        / 3
    )
    assert accuracy.item() == expected_accuracy


def test_temperature_is_applied():
    torch.manual_seed(1)
    q, d = torch.randn(4, 8), torch.randn(6, 8)
    assert info_nce(q, d, temperature=0.02)[0].item() != info_nce(q, d, temperature=1.0)[0].item()
    assert info_nce(q, d, temperature=0.02)[0].item() == pytest_approx(
        _manual_info_nce(q.double(), d.double(), [0, 1, 2, 3], 0.02), rel=1e-4
    )


def test_duplicate_mask_changes_the_loss_exactly_where_a_duplicate_positive_sits():
    torch.manual_seed(2)
    q, d = torch.randn(4, 6, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)
    # documents: positives of queries 0..3, then two hard negatives; query 2's positive repeats query 0's.
    texts = ["paris", "rome", "paris", "oslo", "neg a", "neg b"]
    ids = text_ids(texts)
    per_query_masked = [info_nce(q[i : i + 1], d, torch.tensor([i]), 0.05, ids)[0].item() for i in range(4)]
    per_query_plain = [info_nce(q[i : i + 1], d, torch.tensor([i]), 0.05)[0].item() for i in range(4)]
    changed = [i for i in range(4) if abs(per_query_masked[i] - per_query_plain[i]) > 1e-12]
    assert changed == [0, 2]
    # the masked loss of query 0 is the softmax without column 2 (and vice versa), computed by hand
    assert per_query_masked[0] == pytest_approx(_manual_info_nce(q[[0]], d, [0], 0.05, excluded={(0, 2)}))
    assert per_query_masked[2] == pytest_approx(_manual_info_nce(q[[2]], d, [2], 0.05, excluded={(0, 0)}))
    # and the batch loss is the mean of those per-query losses
    assert info_nce(q, d, None, 0.05, ids)[0].item() == pytest_approx(sum(per_query_masked) / 4)


def test_gather_without_process_group_is_identity():
    d, ids = torch.randn(3, 2), text_ids(["a", "b", "c"])
    out, out_ids, offset = gather_documents(d, ids)
    assert out is d and out_ids is ids and offset == 0


def pytest_approx(value, rel=1e-9):
    import pytest

    return pytest.approx(value, rel=rel)


# ---- two real processes vs one -----------------------------------------------------------------


class ToyEncoder(nn.Module):
    """Token embeddings, masked mean pooling, one linear layer: (B, T) ids -> (B, H)."""

    def __init__(self, vocab: int = 50, hidden: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids) * attention_mask.unsqueeze(-1)  # (B, T, H)
        return self.proj(x.sum(1) / attention_mask.sum(1, keepdim=True))  # (B, H)


def _embed(model, features):
    return model(features["input_ids"], features["attention_mask"])


def _batch(seed: int, rows: int, negatives_per_row: list[int]):
    """Rows of random texts: queries, then documents laid out as the collator does."""
    g = torch.Generator().manual_seed(seed)
    num_docs = rows + sum(negatives_per_row)

    def features(n):
        lengths = torch.randint(2, 6, (n,), generator=g)
        ids = torch.randint(1, 50, (n, 6), generator=g)
        mask = (torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)).long()
        return {"input_ids": ids * mask, "attention_mask": mask}

    return features(rows), features(num_docs)


def _rank_batches():
    """Rank 0: 3 rows with 1 hard negative each; rank 1: 3 rows with 0, 2, 1 negatives."""
    return [_batch(10, 3, [1, 1, 1]), _batch(11, 3, [0, 2, 1])]


def _concat(a, b):
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _one_sgd_step(mini_batch_size: int | None, distributed: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = ToyEncoder()
    if distributed:
        rank = torch.distributed.get_rank()
        queries, documents = _rank_batches()[rank]
        wrapped = nn.parallel.DistributedDataParallel(model)
    else:
        (q0, d0), (q1, d1) = _rank_batches()
        # one process, the whole batch: positives of all 6 rows first, then all negatives
        queries = _concat(q0, q1)
        documents = {k: torch.cat([d0[k][:3], d1[k][:3], d0[k][3:], d1[k][3:]]) for k in d0}
        wrapped = model

    def loss_fn(q, d):
        all_docs, _, offset = gather_documents(d)
        labels = offset + torch.arange(q.shape[0])
        return info_nce(q, all_docs, labels, temperature=0.05)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    if mini_batch_size:
        loss, _ = grad_cache(wrapped, _embed, [queries, documents], loss_fn, mini_batch_size)
    else:
        loss, _ = loss_fn(_embed(wrapped, queries), _embed(wrapped, documents))
    loss.backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_processes_with_gathering_equal_one_process_with_the_double_batch(tmp_path: Path):
    run_gloo_workers(__file__, "--worker", str(tmp_path))

    torch.manual_seed(0)
    start = ToyEncoder().state_dict()
    reference = _one_sgd_step(mini_batch_size=None, distributed=False)
    reference_cached = _one_sgd_step(mini_batch_size=2, distributed=False)
    for name in ("plain", "cached"):
        for rank in range(2):
            weights = torch.load(tmp_path / f"{name}_rank{rank}.pt")
            for key in reference:
                assert not torch.allclose(weights[key], start[key], atol=1e-4), f"{key} did not move"
                assert_close(weights[key], reference[key], rtol=1e-5)
    for key in reference:
        assert_close(reference_cached[key], reference[key], rtol=1e-5)


def _worker(out_dir: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    torch.save(_one_sgd_step(mini_batch_size=None, distributed=True), Path(out_dir) / f"plain_rank{rank}.pt")
    torch.save(_one_sgd_step(mini_batch_size=2, distributed=True), Path(out_dir) / f"cached_rank{rank}.pt")


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    from e5mistral.cli.common import exit_process

    _worker(sys.argv[2])
    exit_process(0)  # destroys the group; gloo's threads cannot abort the exit
