"""The loss options of issue #15 against oracles: sentence-transformers' own losses on the same
embeddings (directions, Matryoshka), loop-and-math computations of the false-negative masks and
of the hard-negatives-only rows, and the argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
from torch import nn

from e5mistral.testing import assert_close
from e5mistral.training.arguments import E5TrainingArguments
from e5mistral.training.loss import info_nce, text_ids
from e5mistral.training.objectives import Batch, batch_row_ids, contrastive_loss

B, K, H, TAU = 4, 2, 8, 0.05  # rows, hard negatives per row, embedding size, temperature

ALL = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
VARIANTS = [
    (("query_to_doc",), "joint"),
    (("query_to_doc", "query_to_query"), "joint"),
    (("query_to_doc", "doc_to_query"), "joint"),
    (("query_to_doc", "doc_to_doc"), "joint"),
    (ALL, "joint"),
    (("query_to_doc", "doc_to_query"), "per_direction"),
]


def st_columns(seed: int = 0):
    """Random (q, positive, negative_1, negative_2) columns, (B, H) each, float64, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2 + K)]


def our_batch(columns) -> Batch:
    """The same embeddings in the collator's layout: positives, then row 0's negatives, row 1's..."""
    q, pos, *negs = columns
    own_negatives = torch.stack(negs, dim=1).reshape(B * K, H)  # (B*K, H): n_{0,1}, n_{0,2}, n_{1,1}, ...
    docs = torch.cat([pos, own_negatives])  # (B + B*K, H)
    doc_texts = [f"p{i}" for i in range(B)] + [f"n{i}.{j}" for i in range(B) for j in range(K)]
    return Batch(
        queries=q,
        documents=docs,
        labels=torch.arange(B),
        q_offset=0,
        query_ids=text_ids([f"q{i}" for i in range(B)]),
        query_positive_ids=text_ids([f"p{i}" for i in range(B)]),
        document_ids=text_ids(doc_texts),
        document_rows=batch_row_ids(B, [K] * B),
    )


def grads(loss, tensors):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, tensors)])


def relative_error(a, b) -> float:
    return ((a - b).norm() / max(a.norm(), b.norm())).item()


@pytest.mark.parametrize(("directions", "partition"), VARIANTS)
def test_directions_equal_sentence_transformers(directions, partition):
    columns = st_columns()
    st_loss = MultipleNegativesRankingLoss(
        nn.Identity(), scale=1 / TAU, directions=directions, partition_mode=partition
    ).compute_loss_from_embeddings(columns, None)
    ours, _ = contrastive_loss(our_batch(columns), TAU, directions, partition)
    assert_close(ours, st_loss, rtol=1e-10, what="loss")
    assert_close(grads(ours, columns), grads(st_loss, columns), rtol=1e-10, what="gradients")
    if directions != ("query_to_doc",):  # the extra terms change the loss: the comparison can fail
        recipe, _ = contrastive_loss(our_batch(columns), TAU)
        assert abs(recipe.item() - ours.item()) > 1e-3


def test_default_call_is_the_recipe_info_nce():
    columns = st_columns(1)
    batch = our_batch(columns)
    ours, acc = contrastive_loss(batch, TAU)
    recipe, recipe_acc = info_nce(batch.queries, batch.documents, batch.labels, TAU, batch.document_ids)
    assert_close(ours, recipe, rtol=1e-12)
    assert acc == recipe_acc


def _manual_loss(q, d, tau, query_texts, doc_texts, doc_rows, directions, restricted=()):
    """Loop-and-math: each row's -log softmax with the false-negative rules written out one by one."""
    cos = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm())) / tau  # noqa: E731
    n = q.shape[0]
    pos_text = doc_texts[:n]
    losses = []
    for i in range(n):
        terms = []  # scores in row i's denominator
        for k in range(d.shape[0]):  # query -> document
            if i in restricted and doc_rows[k] != i:
                continue
            if k == i or doc_texts[k] != pos_text[i]:
                terms.append(cos(q[i], d[k]))
        if i not in restricted:
            for j in range(n):
                same = pos_text[j] == pos_text[i] or query_texts[j] == query_texts[i] or query_texts[j] == pos_text[i]
                if "query_to_query" in directions and j != i and not same:
                    terms.append(cos(q[i], q[j]))
                if "doc_to_query" in directions and (j == i or not same):
                    terms.append(cos(d[i], q[j]))
            for k in range(d.shape[0]):
                if "doc_to_doc" in directions and doc_rows[k] != i and doc_texts[k] != pos_text[i]:
                    terms.append(cos(d[i], d[k]))
        losses.append(-(cos(q[i], d[i]) - math.log(sum(math.exp(t) for t in terms))))
    return sum(losses) / n


# Rows 0 and 1 share their positive text; row 3's query is row 2's query; row 2's hard negative
# is a copy of row 0's positive; row 3's query text is row 1's positive (no instruction).
QUERY_TEXTS = ["q0", "q1", "q2", "q2", "p"]
DOC_TEXTS = ["p", "p", "p2", "p3", "p4", "n0", "p", "n3"]  # positives of rows 0..4, then negatives
DOC_ROWS = [0, 1, 2, 3, 4, 0, 2, 3]


def _mask_batch(seed=3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(5, H, generator=g, dtype=torch.float64)
    d = torch.randn(len(DOC_TEXTS), H, generator=g, dtype=torch.float64)
    batch = Batch(
        q,
        d,
        torch.arange(5),
        0,
        text_ids(QUERY_TEXTS),
        text_ids(DOC_TEXTS[:5]),
        text_ids(DOC_TEXTS),
        torch.tensor(DOC_ROWS),
    )
    return q, d, batch


def test_false_negative_masks_apply_in_every_term():
    q, d, batch = _mask_batch()
    for directions in (ALL, ("query_to_doc", "query_to_query"), ("query_to_doc", "doc_to_query"), ("query_to_doc", "doc_to_doc")):
        ours, _ = contrastive_loss(batch, TAU, directions)
        expected = _manual_loss(q, d, TAU, QUERY_TEXTS, DOC_TEXTS, DOC_ROWS, directions)
        assert_close(ours, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, what=f"loss with {directions}")
        # with distinct ids (nothing to mask but self / own documents) the loss differs: the masks act
        unmasked = Batch(q, d, batch.labels, 0, torch.arange(5), torch.arange(100, 105),
                         torch.cat([torch.arange(100, 105), torch.arange(200, 203)]), batch.document_rows)
        assert abs(contrastive_loss(unmasked, TAU, directions)[0].item() - ours.item()) > 1e-3


def test_hard_negatives_only_rows_see_their_own_documents_only():
    q, d, batch = _mask_batch()
    restricted = torch.tensor([False, False, True, True, False])
    for directions in (("query_to_doc",), ALL):
        ours, _ = contrastive_loss(batch, TAU, directions, restricted=restricted)
        expected = _manual_loss(q, d, TAU, QUERY_TEXTS, DOC_TEXTS, DOC_ROWS, directions, restricted={2, 3})
        assert_close(ours, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, what=f"loss with {directions}")
    # by hand, row 2 alone: its positive d2 against its own hard negative d6 only
    s = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm())) / TAU  # noqa: E731
    row2 = -s(q[2], d[2]) + math.log(math.exp(s(q[2], d[2])) + math.exp(s(q[2], d[6])))
    one = Batch(q, d, torch.tensor([2]), 2, batch.query_ids, batch.query_positive_ids, batch.document_ids,
                batch.document_rows)
    assert_close(contrastive_loss(one, TAU, restricted=torch.tensor([True]))[0], torch.tensor(row2, dtype=torch.float64), rtol=1e-10)
    assert abs(contrastive_loss(one, TAU)[0].item() - row2) > 1e-3  # unrestricted, in-batch negatives count


class FixedEmbeddings(nn.Module):
    """A stand-in Sentence-Transformers model whose "embedding" of row ``r`` is ``table[r]``."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, features):
        return {"sentence_embedding": self.table[features["rows"]]}

    def get_embedding_dimension(self):
        return self.table.shape[1]


@pytest.mark.parametrize(
    ("dims", "weights", "directions"),
    [([8, 4, 2], None, ("query_to_doc",)), ([8, 3], [1.0, 0.5], ("query_to_doc",)), ([2, 8, 5], [0.2, 1.0, 2.0], ALL)],
)
def test_matryoshka_equals_sentence_transformers_matryoshka_loss(dims, weights, directions):
    columns = st_columns(2)
    table = torch.cat(columns)  # (4B, H): column c, row i at c * B + i
    model = FixedEmbeddings(table)
    inner = MultipleNegativesRankingLoss(model, scale=1 / TAU, directions=directions)
    features = [{"rows": torch.arange(c * B, (c + 1) * B)} for c in range(2 + K)]
    st_loss = MatryoshkaLoss(model, inner, dims, weights)(features, None)
    ours, _ = contrastive_loss(our_batch(columns), TAU, directions, "joint", dims, weights)
    assert_close(ours, st_loss, rtol=1e-10, what="loss")
    assert_close(grads(ours, columns), grads(st_loss, columns), rtol=1e-10, what="gradients")
    full, _ = contrastive_loss(our_batch(columns), TAU, directions)
    assert abs(full.item() - ours.item()) > 1e-3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("loss_directions", ["query_to_query"]),
        ("loss_directions", ["query_to_doc", "doc_to_docs"]),
        ("loss_partition", "both"),
        ("matryoshka_dims", [0, 4]),
        ("matryoshka_dims", []),
        ("matryoshka_weights", [1.0]),
        ("truncate_dim", 0),
        ("hard_negatives_only_tasks", [""]),
    ],
)
def test_arguments_reject_bad_loss_options_in_one_line(tmp_path, field, value):
    with pytest.raises(ValueError, match=field) as error:
        E5TrainingArguments(output_dir=str(tmp_path), report_to="none", **{field: value})
    assert "\n" not in str(error.value)


def test_per_direction_refuses_same_side_terms(tmp_path):
    with pytest.raises(ValueError, match="loss_partition=per_direction"):
        E5TrainingArguments(
            output_dir=str(tmp_path), report_to="none", loss_directions=list(ALL), loss_partition="per_direction"
        )
