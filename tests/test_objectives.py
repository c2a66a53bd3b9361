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


def _manual_loss(q, d, tau, query_texts, doc_texts, doc_rows, directions, restricted=(), partition="joint"):
    """Loop-and-math: each row's -log softmax with the false-negative rules written out one by one."""
    cos = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm())) / tau  # noqa: E731
    n = q.shape[0]
    pos_text = doc_texts[:n]
    losses = []
    for i in range(n):
        terms = {name: [] for name in directions}  # direction -> scores in row i's denominator
        for k in range(d.shape[0]):  # query -> document
            if i in restricted and doc_rows[k] != i:
                continue
            if k == i or doc_texts[k] != pos_text[i]:
                terms["query_to_doc"].append(cos(q[i], d[k]))
        if i not in restricted:
            for j in range(n):
                same = pos_text[j] == pos_text[i] or query_texts[j] == query_texts[i] or query_texts[j] == pos_text[i]
                if "query_to_query" in directions and j != i and not same:
                    terms["query_to_query"].append(cos(q[i], q[j]))
                if "doc_to_query" in directions and (j == i or not same):
                    terms["doc_to_query"].append(cos(d[i], q[j]))
            for k in range(d.shape[0]):
                if "doc_to_doc" in directions and doc_rows[k] != i and doc_texts[k] != pos_text[i]:
                    terms["doc_to_doc"].append(cos(d[i], d[k]))
        log_partitions = [math.log(sum(math.exp(t) for t in scores)) for scores in terms.values() if scores]
        if partition == "joint":
            log_z = math.log(sum(math.exp(t) for scores in terms.values() for t in scores))
        else:  # the mean over the directions the row takes part in
            log_z = sum(log_partitions) / len(log_partitions)
        losses.append(-(cos(q[i], d[i]) - log_z))
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
    pairs = [(("query_to_doc", extra), "joint") for extra in ALL[1:]]
    for directions, partition in ((ALL, "joint"), *pairs, (("query_to_doc", "doc_to_query"), "per_direction")):
        ours, _ = contrastive_loss(batch, TAU, directions, partition)
        expected = _manual_loss(q, d, TAU, QUERY_TEXTS, DOC_TEXTS, DOC_ROWS, directions, (), partition)
        assert_close(ours, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, what=f"loss with {directions}")
        # with distinct ids (nothing to mask but self / own documents) the loss differs: the masks act
        unmasked = Batch(q, d, batch.labels, 0, torch.arange(5), torch.arange(100, 105),
                         torch.cat([torch.arange(100, 105), torch.arange(200, 203)]), batch.document_rows)
        assert abs(contrastive_loss(unmasked, TAU, directions, partition)[0].item() - ours.item()) > 1e-3


def test_hard_negatives_only_rows_see_their_own_documents_only():
    q, d, batch = _mask_batch()
    restricted = torch.tensor([False, False, True, True, False])
    for directions, partition in ((("query_to_doc",), "joint"), (ALL, "joint"), (ALL[:3:2], "per_direction")):
        ours, _ = contrastive_loss(batch, TAU, directions, partition, restricted=restricted)
        expected = _manual_loss(q, d, TAU, QUERY_TEXTS, DOC_TEXTS, DOC_ROWS, directions, {2, 3}, partition)
        assert_close(ours, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, what=f"loss with {directions}")
    # by hand, row 2 alone: its positive d2 against its own hard negative d6 only
    s = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm())) / TAU  # noqa: E731
    row2 = -s(q[2], d[2]) + math.log(math.exp(s(q[2], d[2])) + math.exp(s(q[2], d[6])))
    one = Batch(q, d, torch.tensor([2]), 2, batch.query_ids, batch.query_positive_ids, batch.document_ids,
                batch.document_rows)
    restricted_one = contrastive_loss(one, TAU, restricted=torch.tensor([True]))[0]
    assert_close(restricted_one, torch.tensor(row2, dtype=torch.float64), rtol=1e-10)
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

    _get_untruncated_embedding_dimension = get_embedding_dimension  # what MatryoshkaLoss asks from 6.3 on


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


TRAIN_OPTIONS = {
    "loss_directions": list(ALL),
    "matryoshka_dims": [32, 16, 4],  # the tiny model's hidden size is 32
    "matryoshka_weights": [1.0, 0.5, 0.25],
    "hard_negatives_only_tasks": ["clustering"],
}


def _rows():
    from datasets import Dataset

    from e5mistral.testing import make_training_rows

    rows = make_training_rows(8, negatives=1)
    for i, row in enumerate(rows):
        row["task"] = "clustering" if i % 3 == 0 else "retrieval"
    rows[5]["positive"] = rows[4]["positive"]  # a duplicated positive: the masks have work to do
    return Dataset.from_list(rows)


def _manual_step(model, rows, options, lr=0.5):
    """One SGD step by hand: the whole batch in one graph, contrastive_loss with `options`."""
    import copy

    from e5mistral.training.collator import E5Collator
    from e5mistral.training.objectives import gather_batch

    model = copy.deepcopy(model).train()
    batch = E5Collator(TOKENIZER, num_negatives=1)(list(rows))
    q, d = model(**batch["query"]).pooler_output, model(**batch["document"]).pooler_output  # (B, H), (D, H)
    embedded = gather_batch(q, d, batch["query_ids"], batch["document_ids"], batch["document_rows"], gather=False)
    restricted = torch.isin(batch["task_ids"], text_ids(options.get("hard_negatives_only_tasks") or ["-"]))
    loss, _ = contrastive_loss(
        embedded, 0.05, options.get("loss_directions", ["query_to_doc"]), "joint",
        options.get("matryoshka_dims"), options.get("matryoshka_weights"), restricted,
    )
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return {k: v.detach() for k, v in model.state_dict().items()}


TOKENIZER = None


@pytest.mark.parametrize("mini_batch_size", [None, 3])
@pytest.mark.parametrize("option", [*TRAIN_OPTIONS, "all"])
def test_a_trainer_step_with_each_option_equals_the_hand_written_step(tmp_path, option, mini_batch_size):
    """Plain and GradCache (the prefix losses from the cached full embeddings, one backward)."""
    import copy

    from e5mistral.testing import make_tiny_model, make_tiny_tokenizer
    from e5mistral.training.trainer import E5Trainer

    global TOKENIZER
    TOKENIZER = TOKENIZER or make_tiny_tokenizer()
    options = dict(TRAIN_OPTIONS) if option == "all" else {option: TRAIN_OPTIONS[option]}
    if option == "matryoshka_weights":
        options["matryoshka_dims"] = TRAIN_OPTIONS["matryoshka_dims"]
    rows = _rows()
    torch.manual_seed(0)
    model = make_tiny_model(TOKENIZER)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _manual_step(model, rows, options)
    recipe = _manual_step(model, rows, {})
    args = E5TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, optim="sgd", learning_rate=0.5,
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, temperature=0.05, report_to="none",
        save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, seed=0, mini_batch_size=mini_batch_size,
        **options,
    )
    trainer = E5Trainer(copy.deepcopy(model).train(), args, train_dataset=rows, processing_class=TOKENIZER)
    trainer.train()
    got = trainer.model.state_dict()
    for key, value in expected.items():
        assert_close(got[key], value, rtol=1e-5, what=key)
    # the option changed the step (so the comparison above can fail)
    moved = lambda w: torch.cat([(w[k] - start[k]).reshape(-1) for k in expected])  # noqa: E731
    assert relative_error(moved(expected), moved(recipe)) > 1e-3


def test_truncate_dim_is_saved_and_both_loaders_truncate_the_same_way(tmp_path):
    import json

    import torch.nn.functional as F
    from sentence_transformers import SentenceTransformer

    from e5mistral import E5Embedder, E5MistralModel, save_model_folder
    from e5mistral.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    folder = save_model_folder(make_tiny_model(tokenizer), tokenizer, tmp_path / "m", truncate_dim=8)
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["truncate_dim"] == 8
    texts = ["about the river 1", "a castle", "tiger and violin"]
    full = E5Embedder(E5MistralModel.from_pretrained(folder), tokenizer).encode(texts)  # (3, 32)
    ours = E5Embedder.from_pretrained(folder).encode(texts)  # truncate_dim from the folder
    assert full.shape == (3, 32) and ours.shape == (3, 8)
    assert_close(ours, F.normalize(full[:, :8], dim=-1), rtol=1e-6)
    assert_close(ours.norm(dim=-1), torch.ones(3), rtol=1e-6)
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    assert st.truncate_dim == 8
    st_emb = st.encode(texts, convert_to_tensor=True, prompt_name="document")  # (3, 8), not re-normalised by ST
    assert st_emb.shape == (3, 8)
    assert_close(F.normalize(st_emb, dim=-1), ours, rtol=1e-5)
    assert_close(st.similarity(st_emb, st_emb), ours @ ours.T, rtol=1e-5)  # cosine: the same scores
    # per call, and refused beyond the embedding size
    embedder = E5Embedder.from_pretrained(folder, truncate_dim=None)
    assert embedder.encode(texts).shape == (3, 32) and embedder.encode(texts, truncate_dim=4).shape == (3, 4)
    with pytest.raises(ValueError, match="truncate_dim=64"):
        embedder.encode(texts, truncate_dim=64)


def test_the_card_lists_the_options_a_run_used_and_only_those(tmp_path):
    import json

    from e5mistral.hub import collect_model_info, render_model_card
    from e5mistral.testing import make_tiny_model, make_tiny_tokenizer
    from e5mistral.training.objectives import options_in_use
    from e5mistral import save_model_folder

    tokenizer = make_tiny_tokenizer()
    folder = save_model_folder(make_tiny_model(tokenizer), tokenizer, tmp_path / "m", truncate_dim=16)
    recipe = E5TrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert options_in_use(recipe) == {}
    plain = collect_model_info(folder, training_args=json.loads(recipe.to_json_string()))["hyperparameters"]
    assert not any("InfoNCE direction" in k or "Matryoshka" in k or "hard negatives only" in k for k in plain)
    used = E5TrainingArguments(
        output_dir=str(tmp_path), report_to="none", loss_directions=list(ALL), matryoshka_dims=[32, 16, 4],
        matryoshka_weights=[1.0, 0.5, 0.25], hard_negatives_only_tasks=["clustering"], truncate_dim=16,
    )
    assert set(options_in_use(used)) == {
        "loss_directions", "loss_partition", "matryoshka_dims", "matryoshka_weights", "hard_negatives_only_tasks"
    }
    (folder / "training_args.json").write_text(used.to_json_string())
    info = collect_model_info(folder)
    hyper = info["hyperparameters"]
    assert hyper["Matryoshka dimensions"] == "32, 16, 4" and hyper["InfoNCE partition"] == "joint"
    assert hyper["tasks scored on their hard negatives only"] == "clustering"
    assert info["architecture"]["truncate_dim"] == 16
    card = str(render_model_card(folder, "me/m"))
    assert "Matryoshka dimensions | 32, 16, 4" in card and "keep the first 16" in card
    assert "doc_to_doc" in card


def test_the_trainer_refuses_sizes_over_the_model_and_a_collator_without_the_ids(tmp_path, caplog):
    from e5mistral.errors import UserError
    from e5mistral.testing import make_tiny_model, make_tiny_tokenizer
    from e5mistral.training.objectives import loss_for_args
    from e5mistral.training.trainer import E5Trainer

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer)  # hidden size 32
    for field, value in (("matryoshka_dims", [64, 32]), ("truncate_dim", 33)):
        args = E5TrainingArguments(output_dir=str(tmp_path), report_to="none", **{field: value})
        with pytest.raises(UserError, match=rf"{field}=.*embedding size 32") as error:
            E5Trainer(model, args, processing_class=tokenizer)
        assert "\n" not in str(error.value)
    with caplog.at_level("WARNING"):
        args = E5TrainingArguments(output_dir=str(tmp_path), report_to="none", matryoshka_dims=[16, 8], truncate_dim=4)
        E5Trainer(model, args, processing_class=tokenizer)
    assert "leaves out the full size 32" in caplog.text
    assert "truncate_dim=4 is not among the trained sizes" in caplog.text
    from datasets import Dataset

    from e5mistral.testing import make_training_rows

    with caplog.at_level("WARNING"):
        args = E5TrainingArguments(output_dir=str(tmp_path), report_to="none", hard_negatives_only_tasks=["clustring"])
        E5Trainer(model, args, train_dataset=Dataset.from_list(make_training_rows(4)), processing_class=tokenizer)
    assert "no training row has task ['clustring']; the rows' tasks are ['retrieval']" in caplog.text
    args = E5TrainingArguments(output_dir=str(tmp_path), report_to="none", loss_directions=list(ALL))
    with pytest.raises(UserError, match=r"need the batch keys \['query_ids', 'document_rows', 'task_ids'\]"):
        loss_for_args(args, torch.randn(2, 4), torch.randn(2, 4), {"document_ids": torch.arange(2)}, gather=False)


def test_hard_negatives_only_tasks_with_same_task_batches(tmp_path):
    """Same-task batches: a restricted batch's loss is its rows' own-candidate InfoNCE (by hand)."""
    from datasets import Dataset

    from e5mistral.testing import make_tiny_model, make_tiny_tokenizer, make_training_rows
    from e5mistral.training.collator import E5Collator
    from e5mistral.training.trainer import E5Trainer

    tokenizer = make_tiny_tokenizer()
    rows = make_training_rows(8, negatives=1, task="clustering") + make_training_rows(8, negatives=1, task="retrieval")
    args = E5TrainingArguments(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, same_task_batches=True,
        hard_negatives_only_tasks=["clustering"], temperature=0.05, max_steps=4, save_strategy="no",
        disable_tqdm=True, dataloader_pin_memory=False,
    )
    dataset = Dataset.from_list(rows)
    trainer = E5Trainer(make_tiny_model(tokenizer), args, train_dataset=dataset, processing_class=tokenizer)
    collate = E5Collator(tokenizer)
    seen = set()
    for batch_rows in (rows[:4], rows[8:12]):
        batch = collate(batch_rows)
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch)
            q = trainer.model(**batch["query"]).pooler_output
            d = trainer.model(**batch["document"]).pooler_output
        restricted = batch_rows[0]["task"] == "clustering"
        own = [[i, 4 + i] if restricted else list(range(8)) for i in range(4)]  # p_i, n_i (one each) or all
        s = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T / 0.05
        expected = torch.stack([torch.logsumexp(s[i, own[i]], 0) - s[i, i] for i in range(4)]).mean()
        assert_close(loss, expected, rtol=1e-5)
        seen.add(round(loss.item(), 4))
    assert len(seen) == 2
    trainer.train()  # and a run of same-task batches with the option trains
    assert trainer.state.global_step == 4


def test_the_final_save_records_the_options_and_truncate_dim(tmp_path):
    """E5Trainer.save_merged_model: truncate_dim in the ST config, loss_options in training_info, the card."""
    import json

    from datasets import Dataset

    from e5mistral import E5MistralModel
    from e5mistral.testing import make_tiny_model_folder, make_tiny_tokenizer, make_training_rows
    from e5mistral.training.trainer import E5Trainer

    base = make_tiny_model_folder(tmp_path / "base")
    args = E5TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=4, max_steps=1,
        save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, mini_batch_size=2,
        loss_directions=["query_to_doc", "doc_to_query"], loss_partition="per_direction",
        matryoshka_dims=[32, 8], truncate_dim=8,
    )
    trainer = E5Trainer(
        E5MistralModel.from_pretrained(base).train(), args,
        train_dataset=Dataset.from_list(make_training_rows(8)), processing_class=make_tiny_tokenizer(),
    )
    trainer.train()
    folder = trainer.save_merged_model(str(tmp_path / "final"))
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["truncate_dim"] == 8
    info = json.loads((folder / "training_info.json").read_text())
    assert info["loss_options"] == {
        "loss_directions": ["query_to_doc", "doc_to_query"], "loss_partition": "per_direction",
        "matryoshka_dims": [32, 8],
    }
    card = (folder / "README.md").read_text()
    assert "| Matryoshka dimensions | 32, 8 |" in card and "| InfoNCE partition | per_direction |" in card
    assert "keep the first 8" in card


def test_the_collator_names_each_documents_row_and_the_query_and_task_ids():
    from e5mistral.instructions import format_query
    from e5mistral.testing import make_tiny_tokenizer
    from e5mistral.training.collator import E5Collator

    rows = [
        {"query": "a", "positive": "pa", "negatives": ["na1", "na2"], "instruction": "Find the passage", "task": "clustering"},
        {"query": "b", "positive": "pb", "negatives": [], "instruction": "", "task": "retrieval"},
        {"query": "c", "positive": "pc", "negatives": ["nc1"], "instruction": "Find the passage"},  # no task column
    ]
    batch = E5Collator(make_tiny_tokenizer(), num_negatives=None)(rows)
    assert batch["document_rows"].tolist() == [0, 1, 2, 0, 0, 2]  # pa pb pc na1 na2 nc1
    queries = [format_query(r["instruction"], r["query"]) for r in rows]
    assert batch["query_ids"].tolist() == text_ids(queries).tolist()
    assert batch["task_ids"].tolist() == text_ids(["clustering", "retrieval", ""]).tolist()
    one = E5Collator(make_tiny_tokenizer(), num_negatives=1)(rows)
    assert one["document_rows"].tolist() == [0, 1, 2, 0, 2]  # only each row's first hard negative
