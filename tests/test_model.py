"""The model against independent oracles: the published model card's code path, transformers'
own Mistral classes, a fresh process without the package, and Sentence-Transformers."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, MistralConfig, MistralForCausalLM, MistralModel

import e5mistral
from e5mistral import E5Embedder, E5MistralConfig, E5MistralModel, last_token_pool, mean_pool
from e5mistral.testing import assert_close, make_tiny_model, make_tiny_tokenizer, tiny_config

TEXTS = [
    "how tall is mont blanc",
    "Mont Blanc rises 4,806 metres above sea level and is the highest peak of the Alps.",
    "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.",
    "hi",
    "北京是中国的首都。",
]


# ---------------------------------------------------------------------------------------------
# The oracle: the published e5-mistral card's code path, written out independently of e5mistral:
# tokenize without padding and without EOS, append EOS, pad, pool the last token, normalise.
def card_last_token_pool(last_hidden_states, attention_mask):
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size), sequence_lengths]


def card_embed(folder, texts, padding_side, max_length=512):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    backbone = MistralModel.from_pretrained(folder).eval()  # transformers' own class
    ids = [
        [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"][: max_length - 2]
        for t in texts
    ]
    ids = [row + [tokenizer.eos_token_id] for row in ids]
    tokenizer.padding_side = padding_side
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone(**batch).last_hidden_state
    return F.normalize(card_last_token_pool(hidden, batch["attention_mask"]), p=2, dim=1)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("texts", [TEXTS, TEXTS[:1], [TEXTS[3], TEXTS[1]]], ids=["mixed", "one", "short-long"])
def test_embeddings_match_published_card_code_path(tiny_folder, padding_side, texts):
    expected = card_embed(tiny_folder, texts, padding_side)
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    tokenizer.padding_side = padding_side
    model = E5MistralModel.from_pretrained(tiny_folder).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["input_ids"][batch["attention_mask"].bool()] == tokenizer.eos_token_id).sum() == len(texts)
    with torch.no_grad():
        got = model(**batch).pooler_output
    assert_close(got, expected, rtol=1e-5)
    # and through the length-sorted batch encoder, with a batch size that splits the input
    got = E5Embedder(model, tokenizer, batch_size=2).encode(texts)
    assert_close(got, expected, rtol=1e-5)


def test_embeddings_same_for_either_padding_side(tiny_folder):
    left = card_embed(tiny_folder, TEXTS, "left")
    right = card_embed(tiny_folder, TEXTS, "right")
    assert_close(left, right, rtol=1e-5)


def test_last_token_pool_against_loop():
    torch.manual_seed(0)
    hidden = torch.randn(4, 6, 3)
    masks = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]]
    )  # full, right-padded, left-padded, length one
    pooled = last_token_pool(hidden, masks)
    for i in range(4):
        last = max(j for j in range(6) if masks[i, j])
        assert torch.equal(pooled[i], hidden[i, last])


def test_mean_pool_against_loop():
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1, 1:].mean(0)])
    assert_close(mean_pool(hidden, mask), expected, rtol=1e-5)


def test_output_is_typed_with_shapes():
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    out = model(**batch)
    assert isinstance(out, e5mistral.E5MistralModelOutput)
    assert out.last_hidden_state.shape == (*batch["input_ids"].shape, model.config.hidden_size)
    assert out.pooler_output.shape == (len(TEXTS), model.config.hidden_size)
    assert_close(out.pooler_output.norm(dim=-1), torch.ones(len(TEXTS)), rtol=1e-5)


def test_mean_pooling_and_no_normalisation_options():
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, pooling="mean", normalize=False)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    out = model(**batch)
    assert torch.allclose(out.pooler_output, mean_pool(out.last_hidden_state, batch["attention_mask"]))
    with pytest.raises(ValueError, match="pooling='cls'"):
        E5MistralConfig(pooling="cls")


# ---------------------------------------------------------------------------------------------
# One model, four loaders.
def test_same_embeddings_from_every_loader(tiny_folder, tmp_path):
    from sentence_transformers import SentenceTransformer

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    reference = E5Embedder(E5MistralModel.from_pretrained(tiny_folder), tokenizer).encode(TEXTS)

    auto = AutoModel.from_pretrained(tiny_folder)  # registered by `import e5mistral`
    assert type(auto) is E5MistralModel
    assert_close(E5Embedder(auto, tokenizer).encode(TEXTS), reference, rtol=1e-6)

    st = SentenceTransformer(str(tiny_folder), trust_remote_code=True, device="cpu")
    st_emb = st.encode(TEXTS, convert_to_tensor=True, prompt_name="document")
    assert_close(st_emb, reference, rtol=1e-5)
    st_query = st.encode(TEXTS[:2], convert_to_tensor=True, prompt_name="query")
    ours_query = E5Embedder(auto, tokenizer).encode_queries(TEXTS[:2], instruction="web_search")
    assert_close(st_query, ours_query, rtol=1e-5)

    # A fresh process where `e5mistral` cannot be imported: only the folder's own code runs.
    out = tmp_path / "remote.pt"
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["e5mistral"] = None          # any `import e5mistral` now raises ImportError
        try:
            import e5mistral
            raise SystemExit("e5mistral is importable")
        except ImportError:
            pass
        import torch
        from transformers import AutoModel, AutoTokenizer
        folder = {str(tiny_folder)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        tok = AutoTokenizer.from_pretrained(folder)
        batch = tok({TEXTS!r}, padding=True, return_tensors="pt")
        with torch.no_grad():
            torch.save(model(**batch).pooler_output, {str(out)!r})
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, timeout=300)
    assert_close(torch.load(out), reference, rtol=1e-5)


def test_saved_folder_layout(tiny_folder, hub_code):
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["model_type"] == "e5_mistral"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_e5mistral.E5MistralConfig",
        "AutoModel": "modeling_e5mistral.E5MistralModel",
    }
    for name in ["model.safetensors", *hub_code, "tokenizer.json"]:
        assert (tiny_folder / name).is_file(), name
    assert not list(tiny_folder.glob("*.bin"))
    modules = json.loads((tiny_folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((tiny_folder / "1_Pooling/config.json").read_text())["pooling_mode"] == "lasttoken"
    prompts = json.loads((tiny_folder / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"].startswith("Instruct: ") and prompts["query"].endswith("\nQuery: ")
    assert prompts["document"] == ""
    # the Hub-bound code imports only the standard library, torch, transformers and its siblings
    import ast

    siblings = {"." + name.removesuffix(".py") for name in hub_code}
    for name in hub_code:
        tree = ast.parse((tiny_folder / name).read_text())
        roots = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots.add("." * node.level + (node.module or "").split(".")[0])
        assert roots <= {"dataclasses", "json", "os", "torch", "transformers", *siblings}, roots


# ---------------------------------------------------------------------------------------------
# Checkpoint compatibility with transformers' own Mistral classes.
def _mistral_config():
    return MistralConfig(**{k: v for k, v in tiny_config().to_dict().items() if k in MistralConfig().to_dict()})


@pytest.mark.parametrize("cls", [MistralModel, MistralForCausalLM], ids=["published-layout", "causal-lm"])
def test_loads_mistral_checkpoints_without_missing_weights(tmp_path, cls):
    torch.manual_seed(0)
    source = cls(_mistral_config()).eval()
    source.save_pretrained(tmp_path)
    keys = json.loads((tmp_path / "config.json").read_text())
    assert keys["model_type"] == "mistral"
    model, info = E5MistralModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    backbone = source if cls is MistralModel else source.model
    ids = torch.tensor([[1, 40, 41, 42, 2]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).last_hidden_state, backbone(input_ids=ids).last_hidden_state)
    assert not any("lm_head" in k for k in model.state_dict())


# ---------------------------------------------------------------------------------------------
# The EOS contract.
def _strip_eos_from_saved_tokenizer(folder):
    """What transformers 5 users hit: a tokenizer.json post-processor that adds BOS only."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    path.write_text(json.dumps(data))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["add_eos_token"] = False  # and the flag says so too
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_tokenizer_without_eos_is_caught(tiny_folder, tmp_path, caplog):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    _strip_eos_from_saved_tokenizer(broken)
    tokenizer = AutoTokenizer.from_pretrained(broken)
    assert tokenizer("hello")["input_ids"][-1] != tokenizer.eos_token_id
    with pytest.raises(e5mistral.EOSContractError, match="does not append EOS.*ensure_eos"):
        E5Embedder.from_pretrained(broken)
    # the model itself warns when it pools a token that is not EOS
    model = E5MistralModel.from_pretrained(broken)
    with caplog.at_level("WARNING"):
        model(**tokenizer(["hello there"], return_tensors="pt"))
    assert "not EOS" in caplog.text and "ensure_eos" in caplog.text
    # the helper repairs it, and the repair survives save and reload
    e5mistral.ensure_eos(tokenizer)
    tokenizer.save_pretrained(broken)
    reloaded = AutoTokenizer.from_pretrained(broken)
    ids = reloaded("hello")["input_ids"]
    assert ids[0] == reloaded.bos_token_id and ids[-1] == reloaded.eos_token_id
    e5mistral.check_eos(reloaded)


def test_truncation_keeps_eos():
    tokenizer = make_tiny_tokenizer()
    ids = tokenizer(TEXTS[1] * 10, truncation=True, max_length=16)["input_ids"]
    assert len(ids) == 16 and ids[-1] == tokenizer.eos_token_id
    emb = E5Embedder(make_tiny_model(tokenizer), tokenizer, max_length=16)
    long_and_cut = emb.encode([TEXTS[1] * 10])
    expected = emb.encode([tokenizer.decode(ids[1:-1])])
    assert_close(long_and_cut, expected, rtol=1e-5)


def test_ensure_eos_on_llama_style_tokenizer(tmp_path):
    """A Llama/Mistral-style tokenizer saved with add_bos_token only gets EOS, kept across reload."""
    from transformers import LlamaTokenizer

    base = make_tiny_tokenizer()
    base.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    tok = LlamaTokenizer(tokenizer_file=str(tmp_path / "tokenizer.json"), add_bos_token=True, add_eos_token=False)
    assert tok("hi")["input_ids"][-1] != tok.eos_token_id
    e5mistral.ensure_eos(tok)
    assert tok.pad_token is not None
    tok.save_pretrained(tmp_path / "fixed")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "fixed")
    e5mistral.check_eos(reloaded)
    assert reloaded("hi")["input_ids"][0] == reloaded.bos_token_id


def test_pickle_checkpoint_is_refused(tmp_path):
    model = make_tiny_model()
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="refuses pickle checkpoints"):
        E5MistralModel.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="refuses pickle checkpoints"):
        AutoModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="only safetensors"):
        E5MistralModel.from_pretrained(tmp_path, use_safetensors=False)


def test_all_padding_row_is_refused():
    model = make_tiny_model()
    ids = torch.tensor([[5, 6, 2], [2, 2, 2]])
    with pytest.raises(ValueError, match="attention_mask row 1 is all zeros"):
        model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))
