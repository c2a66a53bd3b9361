"""Property-based tests: pooled embeddings do not depend on padding side or amount, and follow
permutations of the batch."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from e5mistral import last_token_pool
from e5mistral.testing import assert_close, make_tiny_model, make_tiny_tokenizer

TOKENIZER = make_tiny_tokenizer()
MODEL = make_tiny_model(TOKENIZER)

lengths = st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=5)


def _pad(rows, side, extra):
    width = max(len(r) for r in rows) + extra
    ids = torch.full((len(rows), width), TOKENIZER.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask


@settings(max_examples=25, deadline=None)
@given(lengths=lengths, extra=st.integers(0, 4), side=st.sampled_from(["left", "right"]), seed=st.integers(0, 10**6))
def test_pool_reads_the_last_real_token(lengths, extra, side, seed):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 900, (n,), generator=g).tolist() for n in lengths]
    _, mask = _pad(rows, side, extra)
    hidden = torch.randn(*mask.shape, 4, generator=g)
    pooled = last_token_pool(hidden, mask)
    for i, n in enumerate(lengths):
        pos = mask.shape[1] - 1 if side == "left" else n - 1
        assert torch.equal(pooled[i], hidden[i, pos])


@settings(max_examples=15, deadline=None)
@given(lengths=lengths, extra=st.integers(0, 3), seed=st.integers(0, 10**6))
def test_embeddings_invariant_to_padding_side_and_amount(lengths, extra, seed):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 900, (n - 1,), generator=g).tolist() + [TOKENIZER.eos_token_id] for n in lengths]
    with torch.no_grad():
        alone = torch.cat([MODEL(input_ids=torch.tensor([r])).pooler_output for r in rows])
        for side in ("left", "right"):
            ids, mask = _pad(rows, side, extra)
            batched = MODEL(input_ids=ids, attention_mask=mask).pooler_output
            assert_close(batched, alone, rtol=1e-5, what=side)


@settings(max_examples=15, deadline=None)
@given(lengths=lengths, seed=st.integers(0, 10**6), side=st.sampled_from(["left", "right"]))
def test_embeddings_equivariant_to_batch_permutation(lengths, seed, side):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 900, (n - 1,), generator=g).tolist() + [TOKENIZER.eos_token_id] for n in lengths]
    perm = torch.randperm(len(rows), generator=g).tolist()
    with torch.no_grad():
        ids, mask = _pad(rows, side, 0)
        base = MODEL(input_ids=ids, attention_mask=mask).pooler_output
        ids, mask = _pad([rows[p] for p in perm], side, 0)
        permuted = MODEL(input_ids=ids, attention_mask=mask).pooler_output
    assert_close(permuted, base[perm], rtol=1e-5)
