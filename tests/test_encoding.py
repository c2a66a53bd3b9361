import pytest
import torch

from e5mistral import INSTRUCTIONS, E5Embedder, format_query, get_instruction
from e5mistral.testing import assert_close, make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="module")
def embedder(tokenizer):
    return E5Embedder(make_tiny_model(tokenizer), tokenizer, batch_size=3)


def test_format_query():
    assert format_query("Find X", "q") == "Instruct: Find X\nQuery: q"
    assert format_query("", "q") == "q"
    assert format_query(None, "q") == "q"
    assert format_query("web_search", "q") == f"Instruct: {INSTRUCTIONS['web_search']}\nQuery: q"
    assert get_instruction("not a registered name") == "not a registered name"
    with pytest.raises(TypeError, match="query must be a str, got int"):
        format_query("Find X", 3)


def test_batched_length_sorted_encode_equals_one_by_one(embedder):
    texts = ["a", "a much longer text about mountains and rivers and lakes", "", "mid length text", "xy z"]
    batched = embedder.encode(texts)
    single = torch.cat([embedder.encode([t], batch_size=1) for t in texts])
    assert batched.shape == (5, 32)
    assert_close(batched, single, rtol=1e-5)
    assert_close(batched.norm(dim=-1), torch.ones(5), rtol=1e-5)


def test_queries_get_the_instruction_documents_do_not(embedder):
    q = embedder.encode_queries(["mont blanc height"], instruction="web_search")
    assert torch.allclose(q, embedder.encode([format_query(INSTRUCTIONS["web_search"], "mont blanc height")]))
    d = embedder.encode_documents(["mont blanc height"])
    assert torch.allclose(d, embedder.encode(["mont blanc height"]))
    assert not torch.allclose(q, d)


def test_progress_bar_on_large_inputs(embedder, capsys):
    embedder.encode(["text"] * 30)  # 30 >= 8 batches of 3
    assert "Encoding" in capsys.readouterr().err
    embedder.encode(["text"] * 4)
    assert "Encoding" not in capsys.readouterr().err


def test_bad_input_names_the_item(embedder):
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got NoneType"):
        embedder.encode(["ok", None])
    with pytest.raises(TypeError, match="single str"):
        embedder.encode("just one string")
    assert embedder.encode([]).shape == (0, 32)


def test_model_mode_is_restored(embedder):
    embedder.model.train()
    embedder.encode(["x"])
    assert embedder.model.training
    embedder.model.eval()


def test_batches_hold_at_most_batch_size_texts_and_pad_less_than_fixed_batches():
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer)
    embedder = E5Embedder(model, tokenizer, batch_size=8)
    words = "river mountain lake valley forest meadow stone bridge".split()
    texts = [" ".join(words[: 1 + i % 8] * (1 + (i * 7) % 9)) for i in range(40)]  # 2 to 73 tokens
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: shapes.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    try:
        planned = embedder.encode(texts)
    finally:
        hook.remove()
    assert all(rows <= 8 for rows, _ in shapes) and sum(rows for rows, _ in shapes) == len(texts)
    lengths = sorted((len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]), reverse=True)
    fixed = sum(len(lengths[i : i + 8]) * lengths[i] for i in range(0, len(lengths), 8))  # 8 per batch, sorted
    assert sum(rows * width for rows, width in shapes) < fixed
    single = torch.cat([embedder.encode([t], batch_size=1) for t in texts[:6]])
    assert_close(planned[:6], single, rtol=1e-5)  # same embeddings whatever the batching
