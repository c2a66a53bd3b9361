"""Reliability for real users: saved folders that load right everywhere, instruction names that
cannot be mistyped silently, lengths the model can hold, and clear errors for missing files."""

import json
import logging
from pathlib import Path

import pytest
import torch

from e5mistral import INSTRUCTIONS, E5Embedder, format_query, get_instruction, save_model_folder
from e5mistral.errors import UserError
from e5mistral.modeling_e5mistral import DEFAULT_PROMPTS
from e5mistral.testing import assert_close, make_tiny_model
from e5mistral.tokenization import check_model_path, clamp_max_length, load_tokenizer
from e5mistral.training.collator import E5Collator

TEXTS = ["how tall is mont blanc", "Mont Blanc rises 4,806 metres above sea level.", "hi", "北京是中国的首都"]
LIMIT = 1024  # tiny_config's max_position_embeddings


# ---------------------------------------------------------------------------------------------
# 8. Every folder the model saves loads in Sentence-Transformers with the model's own pooling.
@pytest.mark.parametrize("trust_remote_code", [True, False], ids=["remote-code", "package-code"])
@pytest.mark.parametrize(
    "config", [{}, {"pooling": "mean", "normalize": False}], ids=["last-token-normalised", "mean-unnormalised"]
)
def test_sentence_transformer_loads_a_save_pretrained_folder_with_the_models_pooling(
    tmp_path, tokenizer, config, trust_remote_code
):
    from sentence_transformers import SentenceTransformer

    model = make_tiny_model(tokenizer, **config)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    st = SentenceTransformer(str(tmp_path), trust_remote_code=trust_remote_code, device="cpu")
    expected_pooling = "lasttoken" if not config else "mean"
    assert json.loads((tmp_path / "1_Pooling/config.json").read_text())["pooling_mode"] == expected_pooling

    embedder = E5Embedder(model, tokenizer)
    # equal relative to magnitude: |difference| <= 1e-5 x norm
    documents = st.encode(TEXTS, convert_to_tensor=True, prompt_name="document")
    assert_close(documents, embedder.encode(TEXTS), rtol=1e-5, what="document embeddings")
    queries = st.encode(TEXTS[:2], convert_to_tensor=True, prompt_name="query")
    expected = embedder.encode_queries(TEXTS[:2], instruction="web_search")
    assert_close(queries, expected, rtol=1e-5, what="query embeddings")


def test_default_sentence_transformers_query_prompt_is_the_web_search_instruction():
    assert DEFAULT_PROMPTS == {"query": format_query(INSTRUCTIONS["web_search"], ""), "document": ""}


def test_save_model_folder_writes_its_prompts_and_max_seq_length(tmp_path, tokenizer):
    prompts = {"query": format_query("Given a claim, find evidence", ""), "document": ""}
    save_model_folder(make_tiny_model(tokenizer), tokenizer, tmp_path, max_seq_length=64, prompts=prompts)
    st_config = json.loads((tmp_path / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == prompts
    assert json.loads((tmp_path / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert (tmp_path / "2_Normalize").is_dir() and (tmp_path / "tokenizer.json").is_file()


def test_save_pretrained_with_push_to_hub_is_refused_rather_than_uploading_without_st_files(tmp_path):
    with pytest.raises(ValueError, match="without its Sentence-Transformers files.*push_to_hub\\(repo_id\\)"):
        make_tiny_model().save_pretrained(tmp_path, push_to_hub=True)
    assert not (tmp_path / "config.json").exists()


# ---------------------------------------------------------------------------------------------
# 6. Instruction names are not mistaken for instruction text.
def test_mistyped_instruction_name_is_refused_with_the_closest_known_name():
    with pytest.raises(UserError, match=r"unknown instruction name 'web_serch' \(did you mean 'web_search'\?\)") as err:
        get_instruction("web_serch")
    assert all(name in str(err.value) for name in INSTRUCTIONS)
    with pytest.raises(UserError, match="unknown instruction name 'qa'; known names: web_search"):
        format_query("qa", "why is the sky blue")


def test_free_text_instructions_and_known_names_still_work():
    assert get_instruction("web_search") == INSTRUCTIONS["web_search"]
    assert get_instruction(" web_search ") == INSTRUCTIONS["web_search"]
    assert get_instruction("Retrieve recipes for the dish") == "Retrieve recipes for the dish"
    assert get_instruction("Summarize.") == "Summarize."  # punctuation: text, not a name
    assert get_instruction("") == "" and get_instruction(None) == ""
    assert format_query("Find it", "q") == "Instruct: Find it\nQuery: q"


def test_encode_queries_refuses_a_mistyped_instruction_name(tokenizer):
    embedder = E5Embedder(make_tiny_model(tokenizer), tokenizer)
    with pytest.raises(UserError, match="did you mean 'semantic_similarity'"):
        embedder.encode_queries(["a cat sits"], instruction="semantic_similarty")


def test_collator_refuses_a_mistyped_instruction_name_in_a_row(tokenizer):
    collate = E5Collator(tokenizer)
    with pytest.raises(UserError, match="did you mean 'fact_checking'"):
        collate([{"query": "q", "positive": "p", "instruction": "fact_cheking"}])


# ---------------------------------------------------------------------------------------------
# 7. Max lengths beyond the model's positions are capped, with a warning that says so.
def test_clamp_max_length_caps_at_the_model_limit_with_a_warning(caplog, tokenizer):
    model = make_tiny_model(tokenizer)
    with caplog.at_level(logging.WARNING, logger="e5mistral.tokenization"):
        assert clamp_max_length(100_000, model.config, "passage_max_length") == LIMIT
    assert "passage_max_length=100000" in caplog.text and f"max_position_embeddings={LIMIT}" in caplog.text
    assert f"using {LIMIT}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="e5mistral.tokenization"):
        assert clamp_max_length(512, model, "max_length") == 512  # a model works too
        assert clamp_max_length(100_000, None, "max_length") == 100_000  # no limit known
        assert clamp_max_length(2048, 4096, "max_length") == 2048
    assert caplog.text == ""


def test_embedder_caps_max_length_at_the_model_positions(caplog, tokenizer, tiny_folder):
    model = make_tiny_model(tokenizer)
    with caplog.at_level(logging.WARNING, logger="e5mistral.tokenization"):
        embedder = E5Embedder(model, tokenizer, max_length=100_000)
    assert embedder.max_length == LIMIT and "max_length=100000" in caplog.text
    with caplog.at_level(logging.WARNING, logger="e5mistral.tokenization"):
        assert E5Embedder.from_pretrained(tiny_folder, max_length=100_000).max_length == LIMIT

    long_text = "Mont Blanc rises above the valley " * 400
    assert len(tokenizer(long_text)["input_ids"]) > LIMIT
    caplog.clear()
    small = E5Embedder(model, tokenizer)
    with caplog.at_level(logging.WARNING, logger="e5mistral.tokenization"):
        capped = small.encode([long_text], max_length=100_000)
    assert "max_length=100000" in caplog.text
    assert torch.equal(capped, small.encode([long_text], max_length=LIMIT))
    assert not torch.equal(capped, small.encode([long_text], max_length=LIMIT - 100))


def test_collator_caps_max_lengths_at_the_given_position_limit(caplog, tokenizer):
    with caplog.at_level(logging.WARNING, logger="e5mistral.tokenization"):
        collate = E5Collator(tokenizer, 100_000, 200_000, max_position_embeddings=LIMIT)
    assert (collate.query_max_length, collate.passage_max_length) == (LIMIT, LIMIT)
    assert "query_max_length=100000" in caplog.text and "passage_max_length=200000" in caplog.text
    long_text = "Mont Blanc rises above the valley " * 400
    batch = collate([{"query": "q", "positive": long_text, "instruction": ""}])
    assert batch["document"]["input_ids"].shape == (1, LIMIT)
    assert batch["document"]["input_ids"][0, -1] == tokenizer.eos_token_id
    assert E5Collator(tokenizer, 100_000, 100_000).passage_max_length == 100_000  # no limit given


# ---------------------------------------------------------------------------------------------
# 10. Missing folders and missing tokenizers say what is missing.
def test_folder_without_tokenizer_names_the_folder_and_the_fix(tmp_path, tokenizer):
    make_tiny_model(tokenizer).save_pretrained(tmp_path)
    message = rf"model folder {tmp_path} has no tokenizer .*tokenizer\.save_pretrained\(folder\)"
    with pytest.raises(UserError, match=message):
        load_tokenizer(tmp_path)
    with pytest.raises(UserError, match=message):
        E5Embedder.from_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path)("hi")["input_ids"] == tokenizer("hi")["input_ids"]


def test_missing_model_folder_is_a_user_error_not_a_repo_id_error(tmp_path):
    for missing in ["./no-such-folder", str(tmp_path / "absent"), "a/b/c"]:
        with pytest.raises(UserError, match=f"model folder {missing} does not exist"):
            check_model_path(missing)
    with pytest.raises(UserError, match="model folder ./no-such-folder does not exist"):
        E5Embedder.from_pretrained("./no-such-folder")
    with pytest.raises(UserError, match="model folder ./no-such-folder does not exist"):
        load_tokenizer("./no-such-folder")
    assert check_model_path("intfloat/e5-mistral-7b-instruct") == "intfloat/e5-mistral-7b-instruct"
    assert check_model_path(Path(tmp_path)) == str(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_model_path(tmp_path / "config.json")


def test_embedder_loads_a_plain_decoder_checkpoint_as_its_e5_family(tmp_path):
    from e5mistral import E5Embedder
    from e5mistral.testing import make_tiny_family_checkpoint, make_tiny_tokenizer

    folder = make_tiny_family_checkpoint("llama", tmp_path / "llama")
    make_tiny_tokenizer().save_pretrained(folder)
    embedder = E5Embedder.from_pretrained(folder)
    assert type(embedder.model).__name__ == "E5LlamaModel"
    emb = embedder.encode_documents(["a plain llama checkpoint, pooled at its EOS"])
    assert emb.shape == (1, embedder.model.config.hidden_size)
    assert_close(emb.norm(dim=-1), torch.ones(1))
