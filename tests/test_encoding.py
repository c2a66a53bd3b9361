import pytest
import torch

from e5mistral import INSTRUCTIONS, E5Embedder, format_query, get_instruction
from e5mistral.testing import make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="module")
def embedder():
    tokenizer = make_tiny_tokenizer()
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
    assert (batched - single).abs().max() < 1e-5
    assert torch.allclose(batched.norm(dim=-1), torch.ones(5), atol=1e-5)


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
