"""Reliability of the training side: bad input gets an error naming the field, the value and the
fix (or a documented behaviour), the loss keeps its invariants (hypothesis), numerical faults stop
training with the step and the rows named, and bf16 autocast keeps the 1/temperature scaling exact.
(That a planted Hub token never reaches a log, a saved file, the card or a push error is in
test_reliability_secrets.py.)"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import processors

from e5mistral import E5Embedder
from e5mistral.testing import WORDS, assert_close, make_tiny_model, make_tiny_tokenizer, make_training_rows
from e5mistral.tokenization import EOSContractError
from e5mistral.training.arguments import E5TrainingArguments
from e5mistral.training.collator import E5Collator
from e5mistral.training.gradcache import grad_cache
from e5mistral.training.loss import info_nce, text_ids
from e5mistral.training.trainer import E5Trainer, _embed

TOKENIZER = make_tiny_tokenizer()
MODEL = make_tiny_model(TOKENIZER)
EOS = TOKENIZER.eos_token_id
ROW = {"query": "q", "positive": "p", "negatives": ["n"], "instruction": "Find it"}


def rows(n: int, negatives: bool = True) -> list[dict]:
    return make_training_rows(n, negatives=int(negatives), words=WORDS[:8])


def trainer(tmp_path, data: list[dict], model=None, **overrides) -> E5Trainer:
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "max_steps": 1,
        "learning_rate": 1e-3,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "use_cpu": True,
        "query_max_length": 32,
        "passage_max_length": 32,
    }
    args = E5TrainingArguments(**{**defaults, **overrides})
    model = model if model is not None else make_tiny_model(TOKENIZER).train()
    return E5Trainer(model, args, train_dataset=Dataset.from_list(data), processing_class=TOKENIZER)


# ---------------------------------------------------------------- bad input: encoder and model


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([None], r"texts\[0\] must be a str, got NoneType \(None\)"),
        (["ok", 3], r"texts\[1\] must be a str, got int \(3\)"),
        ([["a"]], r"texts\[0\] must be a str, got list"),
        ("a single text", "got a single str 'a single text'; wrap it in a list"),
    ],
)
def test_encoder_rejects_non_strings_naming_the_item(texts, message):
    with pytest.raises(TypeError, match=message):
        E5Embedder(MODEL, TOKENIZER).encode(texts)


def test_encoder_embeds_empty_and_whitespace_texts_as_documented():
    texts = ["", "   ", "\n\t", "river"]
    embedder = E5Embedder(MODEL, TOKENIZER, batch_size=2)
    batched = embedder.encode(texts)
    for i, text in enumerate(texts):
        ids = TOKENIZER([text], return_tensors="pt")["input_ids"]
        assert ids[0, -1] == EOS  # even the empty text ends with EOS: pooling reads EOS
        with torch.no_grad():
            alone = MODEL(input_ids=ids).pooler_output[0]
        assert_close(batched[i], alone, rtol=1e-5)
    assert torch.isfinite(batched).all() and torch.allclose(batched.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_far_too_long_texts_are_truncated_with_eos_kept():
    long_text = " ".join(WORDS * 300)  # thousands of tokens
    embedder = E5Embedder(MODEL, TOKENIZER, max_length=16)
    ids = TOKENIZER([long_text], truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 16) and ids[0, -1] == EOS
    with torch.no_grad():
        expected = MODEL(input_ids=ids).pooler_output[0]
    assert_close(embedder.encode(["short", long_text])[1], expected, rtol=1e-5)

    batch = E5Collator(TOKENIZER, query_max_length=8, passage_max_length=12)(
        [{"query": long_text, "positive": long_text, "negatives": ["short"]}, {"query": "q", "positive": "p"}]
    )
    assert batch["query"]["input_ids"].shape[1] == 8 and batch["query"]["input_ids"][0, -1] == EOS
    assert batch["document"]["input_ids"].shape[1] == 12 and batch["document"]["input_ids"][0, -1] == EOS


def test_model_without_input_names_the_missing_argument():
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        MODEL(input_ids=None)


# ---------------------------------------------------------------- bad input: tokenizer


def _tokenizer_without_eos_appended():
    tok = make_tiny_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def _tokenizer_without_eos_token():
    tok = make_tiny_tokenizer()
    tok.eos_token = None
    return tok


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (_tokenizer_without_eos_appended, EOSContractError, r"does not append EOS .*ensure_eos"),
        (_tokenizer_without_eos_token, EOSContractError, r"has no EOS token.*ensure_eos"),
    ],
)
@pytest.mark.parametrize("consumer", ["collator", "embedder"])
def test_tokenizer_without_eos_is_refused_with_the_fix(make, error, message, consumer):
    tok = make()
    with pytest.raises(error, match=message):
        E5Collator(tok) if consumer == "collator" else E5Embedder(MODEL, tok)


def test_tokenizer_without_pad_token_is_refused_up_front_with_the_fix(tmp_path):
    tok = make_tiny_tokenizer()
    tok.pad_token = None
    fix = r"pad_token=None.*tokenizer.pad_token = tokenizer.eos_token"
    with pytest.raises(ValueError, match="E5Collator: .*" + fix):
        E5Collator(tok)
    with pytest.raises(ValueError, match="E5Embedder: .*" + fix):
        E5Embedder(MODEL, tok)
    args = E5TrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="E5Collator: .*" + fix):
        E5Trainer(MODEL, args, train_dataset=Dataset.from_list(rows(4)), processing_class=tok)


# ---------------------------------------------------------------- bad input: collator rows


@pytest.mark.parametrize(
    ("row", "error", "message"),
    [
        ({"positive": "p"}, ValueError, r"batch row 1: column 'query' is missing \(row has \['positive'\]\)"),
        ({"query": None, "positive": "p"}, ValueError, r"column 'query' must be a non-empty str, got None"),
        ({"query": "", "positive": "p"}, ValueError, r"column 'query' must be a non-empty str, got ''"),
        ({"query": "  \n", "positive": "p"}, ValueError, r"column 'query' must be a non-empty str, got '  \\n'"),
        ({"query": 7, "positive": "p"}, ValueError, r"column 'query' must be a non-empty str, got 7"),
        ({"query": "q", "positive": ["p"]}, ValueError, r"column 'positive' must be a non-empty str, got \['p'\]"),
        ({"query": "q", "positive": "p", "negatives": [None]}, ValueError, r"'negatives' must be a list .*\[None\]"),
        ({"query": "q", "positive": "p", "negatives": [""]}, ValueError, r"'negatives' must be a list .*\[''\]"),
        ({"query": "q", "positive": "p", "negative": ""}, ValueError, r"column 'negative' must be a non-empty str"),
        ({"query": "q", "positive": "p", "instruction": 5}, TypeError, r"column 'instruction' must be a str, got 5"),
    ],
)
def test_malformed_rows_name_row_column_and_value(row, error, message):
    with pytest.raises(error, match=message):
        E5Collator(TOKENIZER)([ROW, row])


def test_documented_row_leniencies_and_empty_batch():
    collate = E5Collator(TOKENIZER)
    plain = collate([ROW, {"query": "q2", "positive": "p2"}])
    # Extra columns are ignored; None instruction or negatives mean "none".
    lenient = collate(
        [{**ROW, "score": 0.5, "id": 3}, {"query": "q2", "positive": "p2", "instruction": None, "negatives": None}]
    )
    for side in ("query", "document"):
        assert torch.equal(plain[side]["input_ids"], lenient[side]["input_ids"])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_trainer_ignores_extra_columns_and_names_a_wrongly_typed_one(tmp_path):
    extra = [{**r, "score": 1.0, "source_id": i} for i, r in enumerate(rows(4))]
    trainer(tmp_path, extra).train()  # extra columns are dropped before the collator
    bad = [{**r, "positive": 40 + i} for i, r in enumerate(rows(4))]  # an int column (Arrow columns have one type)
    with pytest.raises(ValueError, match="column 'positive' must be a non-empty str, got 4[0-3]"):
        trainer(tmp_path, bad).train()


# ---------------------------------------------------------------- bad input: arguments and loss


@pytest.mark.parametrize("temperature", [0.0, -0.02, float("nan")])
def test_non_positive_temperature_is_refused_by_arguments_and_loss(tmp_path, temperature):
    with pytest.raises(ValueError, match=rf"temperature={temperature} must be > 0; the recipe uses 0.02"):
        E5TrainingArguments(str(tmp_path), temperature=temperature, report_to="none")
    with pytest.raises(ValueError, match=rf"temperature must be > 0, got {temperature}"):
        info_nce(torch.randn(2, 4), torch.randn(2, 4), temperature=temperature)


def test_gradcache_chunk_larger_than_the_batch_warns_and_equals_the_plain_loss(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="e5mistral.training.arguments"):
        E5TrainingArguments(str(tmp_path), per_device_train_batch_size=4, mini_batch_size=64, report_to="none")
    assert "mini_batch_size=64 >= per_device_train_batch_size=4: GradCache saves no memory" in caplog.text

    batch = E5Collator(TOKENIZER, 32, 32)(rows(4))
    model = make_tiny_model(TOKENIZER).train()
    plain, _ = info_nce(_embed(model, batch["query"]), _embed(model, batch["document"]))
    plain.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    cached, _ = grad_cache(model, _embed, [batch["query"], batch["document"]], info_nce, mini_batch_size=64)
    cached.backward()
    assert_close(cached, plain, rtol=1e-5)
    for p, g in zip(model.parameters(), expected):
        assert_close(p.grad, g, rtol=1e-5)


@pytest.mark.parametrize("negatives", [True, False])
def test_a_batch_of_one_warns_once_that_it_has_no_in_batch_negatives(tmp_path, caplog, negatives):
    t = trainer(tmp_path, rows(3, negatives), per_device_train_batch_size=1, max_steps=3, logging_steps=1)
    with caplog.at_level(logging.WARNING, logger="e5mistral.training.trainer"):
        t.train()
    warnings = [r for r in caplog.records if "a batch of one row has no in-batch negatives" in r.getMessage()]
    assert len(warnings) == 1 and "per_device_train_batch_size (now 1" in warnings[0].getMessage()
    losses = [log["loss"] for log in t.state.log_history if "loss" in log]
    assert (max(losses) == 0.0) != negatives  # without a hard negative the loss is 0: nothing is learned


# ---------------------------------------------------------------- loss invariants (hypothesis)


def _pad(token_rows: list[list[int]], side: str, extra: int):
    width = max(len(r) for r in token_rows) + extra
    ids = torch.full((len(token_rows), width), TOKENIZER.pad_token_id)
    mask = torch.zeros((len(token_rows), width), dtype=torch.long)
    for i, row in enumerate(token_rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return {"input_ids": ids, "attention_mask": mask}


texts = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join), min_size=2, max_size=5)


@settings(max_examples=8, deadline=None)
@given(
    queries=texts,
    side=st.sampled_from(["left", "right"]),
    extra_q=st.integers(0, 4),
    extra_d=st.integers(0, 4),
    temperature=st.sampled_from([0.02, 0.05, 1.0]),
)
def test_loss_is_invariant_to_padding_side_and_amount(queries, side, extra_q, extra_d, temperature):
    documents = [f"about {q}" for q in queries] + ["a hard negative"]
    q_ids, d_ids = TOKENIZER(queries)["input_ids"], TOKENIZER(documents)["input_ids"]
    with torch.no_grad():
        reference, _ = info_nce(
            _embed(MODEL, _pad(q_ids, "right", 0)), _embed(MODEL, _pad(d_ids, "right", 0)), temperature=temperature
        )
        loss, _ = info_nce(
            _embed(MODEL, _pad(q_ids, side, extra_q)),
            _embed(MODEL, _pad(d_ids, side, extra_d)),
            temperature=temperature,
        )
    assert_close(loss, reference, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    num_queries=st.integers(1, 6),
    num_negatives=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
    duplicate=st.booleans(),
    temperature=st.sampled_from([0.02, 0.1, 1.0]),
)
def test_loss_is_invariant_to_permutations_of_queries_and_of_documents(
    num_queries, num_negatives, seed, duplicate, temperature
):
    g = torch.Generator().manual_seed(seed)
    q, d = torch.randn(num_queries, 8, generator=g), torch.randn(num_queries + num_negatives, 8, generator=g)
    names = [f"doc{i}" for i in range(len(d))]
    if duplicate and len(d) > 1:  # a duplicated positive exercises the false-negative mask
        names[-1], d[-1] = names[0], d[0]
    ids = text_ids(names)
    loss, accuracy = info_nce(q, d, temperature=temperature, document_ids=ids)

    # Queries permuted together with their labels (their positives stay where they are).
    perm = torch.randperm(num_queries, generator=g)
    permuted, acc_q = info_nce(q[perm], d, labels=perm, temperature=temperature, document_ids=ids)
    assert_close(permuted, loss, rtol=1e-5)
    assert acc_q == accuracy

    # Documents permuted, labels following their positives.
    doc_perm = torch.randperm(len(d), generator=g)
    where = torch.argsort(doc_perm)  # where[i]: new index of old document i
    shuffled, acc_d = info_nce(
        q, d[doc_perm], labels=where[:num_queries], temperature=temperature, document_ids=ids[doc_perm]
    )
    assert_close(shuffled, loss, rtol=1e-5)
    assert acc_d == accuracy

    # Both at once: query i with its positive moved together.
    both, _ = info_nce(q[perm], d[doc_perm], labels=where[perm], temperature=temperature, document_ids=ids[doc_perm])
    assert_close(both, loss, rtol=1e-5)


# ---------------------------------------------------------------- numerical safety


@pytest.mark.parametrize("mini_batch_size", [None, 2])
def test_a_nan_embedding_stops_training_naming_step_rows_and_texts(tmp_path, mini_batch_size):
    data = rows(4)
    data[2]["positive"] = "the river ~ 2"  # the only text holding the "~" token
    poisoned = make_tiny_model(TOKENIZER).train()
    with torch.no_grad():
        (token,) = TOKENIZER("~", add_special_tokens=False)["input_ids"]
        poisoned.embed_tokens.weight[token] = float("nan")  # NaN from "~" onwards in that text only
    t = trainer(tmp_path, data, poisoned, mini_batch_size=mini_batch_size)
    with pytest.raises(FloatingPointError) as err:
        t.train()
    message = str(err.value)
    assert "non-finite embedding at training step 1 (process 0): 1 of 8 document rows" in message
    assert re.search(r"rows \[[0-3]\], texts \['the river ~ 2'\]", message) and "lower learning_rate" in message


def test_a_non_finite_loss_stops_training_naming_the_step_and_batch(tmp_path, monkeypatch):
    import e5mistral.training.trainer as trainer_module

    def nan_loss(*args, **kwargs):
        loss, accuracy = info_nce(*args, **kwargs)
        return loss * float("inf"), accuracy

    monkeypatch.setattr(trainer_module, "info_nce", nan_loss)
    t = trainer(tmp_path, rows(8), max_steps=3, logging_steps=1)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(inf\) at training step 1 on a batch of 4 queries"):
        t.train()


def _near_duplicates(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(16, 64, generator=g)
    documents = torch.cat([base, base + 0.1 * torch.randn(16, 64, generator=g)])  # cos ~0.99 hard negatives
    return base + 0.1 * torch.randn(16, 64, generator=g), documents


@pytest.mark.parametrize("temperature", [0.02, 0.001])
def test_bf16_autocast_keeps_the_temperature_scaling_exact(temperature):
    queries, documents = _near_duplicates()
    q32, d32 = queries.clone().requires_grad_(), documents.clone().requires_grad_()
    reference, _ = info_nce(q32, d32, temperature=temperature)
    reference.backward()
    q16, d16 = queries.bfloat16().requires_grad_(), documents.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = info_nce(queries, documents, temperature=temperature)  # fp32 inputs under autocast
        loss_bf16, _ = info_nce(q16, d16, temperature=temperature)  # bf16 embeddings, as a bf16 model gives
    loss_bf16.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(loss_bf16)
    assert_close(loss, reference, rtol=1e-5)  # was 0.18 vs 0.024 at 0.001 with bf16 scores
    # bf16 embeddings themselves carry 2^-8 rounding; the scores add none on top of it.
    expected_bf16, _ = info_nce(queries.bfloat16().float(), documents.bfloat16().float(), temperature=temperature)
    assert_close(loss_bf16, expected_bf16, rtol=1e-4)
    assert torch.isfinite(q16.grad).all() and torch.isfinite(d16.grad).all()


@pytest.mark.parametrize("temperature", [0.02, 0.001])
def test_bf16_autocast_gradcache_matches_the_plain_path_and_stays_finite(temperature):
    batch = E5Collator(TOKENIZER, 32, 32)(rows(6))
    model = make_tiny_model(TOKENIZER).train()
    loss_fn = lambda q, d: info_nce(q, d, temperature=temperature)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, _ = loss_fn(_embed(model, batch["query"]), _embed(model, batch["document"]))
    plain.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached, _ = grad_cache(model, _embed, [batch["query"], batch["document"]], loss_fn, mini_batch_size=2)
    cached.backward()
    assert torch.isfinite(plain) and torch.isfinite(cached)
    assert_close(cached, plain, rtol=1e-2)  # bf16 autocast: about 3 significant digits
    for p, g in zip(model.parameters(), expected):
        assert torch.isfinite(p.grad).all()
        assert (p.grad - g).norm() <= 0.05 * g.norm() + 1e-4
