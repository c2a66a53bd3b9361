"""GradCache gives the full-batch loss and gradients, replays dropout, and respects scaling."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from e5mistral.training.gradcache import RandContext, grad_cache, plan_mini_batches, sort_by_length, split_features
from e5mistral.training.loss import info_nce
from e5mistral.testing import assert_close


class DropoutEncoder(nn.Module):
    """Embeddings -> dropout -> masked mean -> linear: (B, T) ids -> (B, H)."""

    def __init__(self, p: float):
        super().__init__()
        self.embed = nn.Embedding(40, 8)
        self.dropout = nn.Dropout(p)
        self.proj = nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask):
        x = self.dropout(self.embed(input_ids)) * attention_mask.unsqueeze(-1)  # (B, T, H)
        return self.proj(x.sum(1) / attention_mask.sum(1, keepdim=True))  # (B, H)


def embed(model, features):
    return model(features["input_ids"], features["attention_mask"])


def make_batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (n,), generator=g)
    mask = (torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)).long()  # right padding
    return {"input_ids": torch.randint(1, 40, (n, 7), generator=g) * mask, "attention_mask": mask}


QUERIES, DOCUMENTS = make_batch(5, 0), make_batch(10, 1)  # 5 positives + 5 hard negatives


def grads_of(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("temperature", [0.02, 0.5])
@pytest.mark.parametrize("limits", [dict(mini_batch_size=2), dict(max_positions=9), dict(mini_batch_size=3, max_positions=14)])
def test_cached_loss_and_gradients_equal_the_full_batch(temperature, limits):
    loss_fn = partial(info_nce, temperature=temperature)
    torch.manual_seed(0)
    model = DropoutEncoder(p=0.0)
    plain_loss, plain_acc = loss_fn(embed(model, QUERIES), embed(model, DOCUMENTS))
    plain_loss.backward()
    plain = grads_of(model)
    model.zero_grad()

    cached_loss, cached_acc = grad_cache(model, embed, [QUERIES, DOCUMENTS], loss_fn, **limits)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # nothing before backward
    cached_loss.backward()
    assert_close(cached_loss, plain_loss.detach(), rtol=1e-5)
    assert cached_acc == plain_acc
    for name, grad in grads_of(model).items():
        assert grad.abs().sum() > 0
        assert_close(grad, plain[name], rtol=1e-5)


def test_a_token_budget_bounds_each_mini_batch_and_groups_short_texts():
    features, _ = sort_by_length(make_batch(40, 3))
    lengths = features["attention_mask"].sum(dim=1)
    for budget, rows in ((12, None), (30, 4), (6, None)):
        plan = plan_mini_batches(features, mini_batch_size=rows, max_positions=budget)
        assert [i for r in plan for i in r] == list(range(40))  # every row once, in order
        for chunk in plan:
            padded = len(chunk) * int(lengths[chunk.start])  # rows x its longest text (sorted: the first)
            assert len(chunk) == 1 or padded <= budget
            assert rows is None or len(chunk) <= rows
        if rows is None:  # short texts share a forward: fewer forwards than one per text
            assert len(plan) < 40
    with pytest.raises(ValueError, match="mini_batch_size or max_positions"):
        plan_mini_batches(features)


@pytest.mark.parametrize(("budget", "rows"), [(12, None), (30, 4), (3, None), (100, None)])
def test_a_packed_token_budget_counts_tokens_and_cuts_the_fewest_chunks(budget, rows):
    features, _ = sort_by_length(make_batch(40, 3))
    lengths = features["attention_mask"].sum(dim=1).tolist()
    plan = plan_mini_batches(features, mini_batch_size=rows, max_positions=budget, packed=True)
    assert [i for r in plan for i in r] == list(range(40))
    tokens = [sum(lengths[i] for i in chunk) for chunk in plan]
    for chunk, total in zip(plan, tokens):
        assert len(chunk) == 1 or total <= budget  # the texts' own tokens, not rows x longest
        assert rows is None or len(chunk) <= rows
    for (a, b), total in zip(zip(plan, plan[1:]), tokens):  # no chunk could take the next row: fewest chunks
        assert total + lengths[b.start] > budget or (rows is not None and len(a) == rows)
    padded = plan_mini_batches(features, mini_batch_size=rows, max_positions=budget)
    assert len(plan) <= len(padded)


def test_dropout_is_replayed_in_the_second_forward():
    torch.manual_seed(0)
    model = DropoutEncoder(p=0.5)
    # grad_cache embeds length-sorted mini-batches; the reference embeds the same ones once, with a
    # graph, in the same RNG order, and puts the rows back in their original order
    sorted_sides = [sort_by_length(QUERIES), sort_by_length(DOCUMENTS)]
    chunks = [split_features(features, 2) for features, _ in sorted_sides]
    torch.manual_seed(123)
    reps = [torch.cat([embed(model, c) for c in side])[inverse] for side, (_, inverse) in zip(chunks, sorted_sides)]
    reference_loss, _ = info_nce(*reps, temperature=0.05)
    reference_loss.backward()
    reference = grads_of(model)
    model.zero_grad()

    torch.manual_seed(123)
    loss, _ = grad_cache(model, embed, [QUERIES, DOCUMENTS], partial(info_nce, temperature=0.05), mini_batch_size=2)
    loss.backward()
    assert_close(loss, reference_loss.detach(), rtol=1e-5)
    for name, grad in grads_of(model).items():
        assert_close(grad, reference[name], rtol=1e-5)

    # the check has teeth: dropout does draw different masks on a second forward
    assert not torch.allclose(embed(model, QUERIES), embed(model, QUERIES))


def test_backward_scale_reaches_every_mini_batch():
    torch.manual_seed(0)
    model = DropoutEncoder(p=0.0)
    loss, _ = grad_cache(model, embed, [QUERIES, DOCUMENTS], partial(info_nce, temperature=0.05), 2)
    loss.backward()
    full = grads_of(model)
    model.zero_grad()
    loss, _ = grad_cache(model, embed, [QUERIES, DOCUMENTS], partial(info_nce, temperature=0.05), 2)
    (loss / 4).backward()  # what the Trainer does with gradient_accumulation_steps=4
    for name, grad in grads_of(model).items():
        assert_close(grad, full[name] / 4, rtol=1e-5)


def test_under_no_grad_it_is_the_plain_loss():
    torch.manual_seed(0)
    model = DropoutEncoder(p=0.0)
    with torch.no_grad():
        plain, _ = info_nce(embed(model, QUERIES), embed(model, DOCUMENTS), temperature=0.05)
        cached, _ = grad_cache(model, embed, [QUERIES, DOCUMENTS], partial(info_nce, temperature=0.05), 3)
    assert not cached.requires_grad
    assert_close(cached, plain, rtol=1e-5)


def test_split_features_trims_only_trailing_padding():
    features = {
        "input_ids": torch.tensor([[0, 5, 6, 0], [0, 0, 7, 0], [1, 2, 3, 4]]),
        "attention_mask": torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0], [1, 1, 1, 1]]),
    }
    first, second = split_features(features, 2)
    assert first["input_ids"].tolist() == [[0, 5, 6], [0, 0, 7]]  # leading pads kept, trailing column dropped
    assert second["attention_mask"].tolist() == [[1, 1, 1, 1]]
    with pytest.raises(ValueError, match="mini_batch_size"):
        split_features(features, 0)


def test_rand_context_restores_state_and_leaves_outer_rng_alone():
    torch.manual_seed(5)
    state = RandContext()
    first = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(5)
    torch.rand(3)
    with state:
        replay = torch.rand(3)
    assert torch.equal(replay, first)
    assert torch.equal(torch.rand(3), after)  # the replay did not advance the outer generator


def test_length_sorted_mini_batches_compute_fewer_padding_positions():
    features = make_batch(64, 7)
    positions = lambda chunks: sum(c["input_ids"].numel() for c in chunks)
    real = int(features["attention_mask"].sum())
    unsorted = positions(split_features(features, 4))
    sorted_ = positions(split_features(sort_by_length(features)[0], 4))
    assert real <= sorted_ < unsorted
    # and the rows come back: sorted rows indexed by the inverse are the original rows
    sorted_features, inverse = sort_by_length(features)
    assert torch.equal(sorted_features["input_ids"][inverse], features["input_ids"])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_length_sorted_chunks_give_the_one_forward_embeddings_and_gradients(padding_side):
    from e5mistral.testing import make_tiny_model, make_tiny_tokenizer
    from e5mistral.training.gradcache import embed_length_sorted

    tokenizer = make_tiny_tokenizer(padding_side=padding_side)
    model = make_tiny_model(tokenizer)
    texts = ["a short one", "a much longer text about rivers, mountains and the lakes between them", "mid size text"] * 3
    features = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    embed_fn = lambda m, f: m(**f).pooler_output
    weights = torch.randn(len(texts), model.config.hidden_size)

    whole = embed_fn(model, features)  # (B, H)
    (whole * weights).sum().backward()
    expected = grads_of(model)
    model.zero_grad()
    chunked = embed_length_sorted(model, embed_fn, features, max_positions=40)  # several chunks
    (chunked * weights).sum().backward()
    assert_close(chunked, whole, rtol=1e-5)
    for name, grad in grads_of(model).items():
        assert_close(grad, expected[name], rtol=1e-5)


def _brute_force_plan_cost(lengths, max_positions, overhead, max_rows=None):
    """The cheapest cost over all 2^(n-1) contiguous partitions: the oracle for plan_chunks."""
    from itertools import pairwise, product

    n, best = len(lengths), None
    for cuts in product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        chunks = [lengths[a:b] for a, b in pairwise(bounds)]
        if any(len(c) > 1 and (len(c) * c[0] > max_positions or (max_rows and len(c) > max_rows)) for c in chunks):
            continue
        cost = sum(len(c) * c[0] + overhead for c in chunks)
        best = cost if best is None else min(best, cost)
    return best


def test_plan_chunks_is_the_cheapest_partition_within_the_position_bound():
    from e5mistral.batching import plan_chunks

    rng = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 10, (1,), generator=rng))
        lengths = sorted(torch.randint(1, 60, (n,), generator=rng).tolist(), reverse=True)
        max_positions = int(torch.randint(30, 200, (1,), generator=rng))
        overhead = int(torch.randint(0, 40, (1,), generator=rng))
        max_rows = None if trial % 2 else int(torch.randint(1, 5, (1,), generator=rng))
        plan = plan_chunks(lengths, max_positions, overhead, max_rows=max_rows)
        assert [i for rows in plan for i in rows] == list(range(n))  # every row once, in order
        assert all(len(rows) == 1 or len(rows) * lengths[rows.start] <= max_positions for rows in plan)
        assert max_rows is None or all(len(rows) <= max_rows for rows in plan)
        cost = sum(len(rows) * lengths[rows.start] + overhead for rows in plan)
        expected = _brute_force_plan_cost(lengths, max_positions, overhead, max_rows)
        assert cost == expected, (lengths, max_positions, overhead, max_rows)


def test_plan_chunks_trades_padding_against_forwards():
    from e5mistral.batching import plan_chunks

    lengths = [120, 118, 115, 40, 38, 37, 36, 9, 8, 8]
    free = plan_chunks(lengths, 4096, overhead=0)  # free forwards: no padding at all
    assert sum(len(rows) * lengths[rows.start] for rows in free) == sum(lengths)
    assert plan_chunks(lengths, 4096, overhead=10_000) == [range(10)]  # costly forwards: one chunk
    assert [len(r) for r in plan_chunks(lengths, 4096, overhead=50)] == [3, 4, 3]  # the three length groups
    with pytest.raises(ValueError, match="sorted longest first"):
        plan_chunks([3, 5], 100)


def test_the_last_mini_batch_keeps_its_graph_and_is_not_embedded_again():
    """Of k mini-batches, step (1) embeds k - 1 without a graph and the last with one; the backward
    re-embeds only the k - 1, starting after the kept one's graph is spent."""
    torch.manual_seed(0)
    model = DropoutEncoder(p=0.0)
    calls, grads_at_replay = [], []

    def counted(m, features):
        calls.append((torch.is_grad_enabled(), features["input_ids"].shape[0]))
        grads_at_replay.append(m.proj.weight.grad is not None)  # the kept backward already ran?
        return embed(m, features)

    loss, _ = grad_cache(model, counted, [QUERIES, DOCUMENTS], partial(info_nce, temperature=0.05), mini_batch_size=2)
    k = 3 + 5  # 5 queries and 10 documents in mini-batches of 2
    assert [grad for grad, _ in calls] == [False] * (k - 1) + [True]
    assert calls[-1][1] == 2  # the documents' last mini-batch
    before = len(calls)
    loss.backward()
    assert len(calls) - before == k - 1 and all(grad for grad, _ in calls[before:])
    assert sum(rows for _, rows in calls[before:]) == 15 - 2  # every row but the kept ones, once
    assert grads_at_replay[before:] == [True] * (k - 1)  # the kept graph went first, before any replay


def test_join_sides_pads_right_and_refuses_what_it_cannot_join():
    from e5mistral.training.gradcache import join_sides

    q = {"input_ids": torch.tensor([[5, 2]]), "attention_mask": torch.tensor([[1, 1]])}
    d = {"input_ids": torch.tensor([[6, 7, 2], [8, 2, 9]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    joined, sizes = join_sides([q, d], pad_id=9)
    assert sizes == [1, 2]
    assert joined["input_ids"].tolist() == [[5, 2, 9], [6, 7, 2], [8, 2, 9]]
    assert joined["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0]]
    assert join_sides([q, {**d, "attention_mask": d["attention_mask"].bool()}]) is not None  # bool masks too
    left = {"input_ids": torch.tensor([[0, 6, 2]]), "attention_mask": torch.tensor([[0, 1, 1]])}
    assert join_sides([q, left]) is None  # left padding: widening on the right would change positions
    assert join_sides([q, {**d, "token_type_ids": torch.zeros(2, 3, dtype=torch.long)}]) is None
