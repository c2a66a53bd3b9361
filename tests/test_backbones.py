"""Every supported decoder family end to end, against transformers' own model of that family.

For each family a tiny checkpoint of transformers' own classes (``Qwen2ForCausalLM``, ...), with
random biases and norms, is loaded with ``E5MistralModel.from_pretrained`` and saved as an E5
folder. Its embeddings must equal the family's own ``AutoModel`` + last-token pooling + L2 norm
(written out here), with left and right padding, through the class, ``AutoModel`` with the package,
``AutoModel(trust_remote_code=True)`` and Sentence-Transformers in a process that cannot import
e5mistral. Checkpoints whose weights do not all land are refused.
"""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from e5mistral import E5Embedder, E5MistralConfig, E5MistralModel, save_model_folder
from e5mistral.modeling_e5mistral import E5_MODEL_CLASSES, CheckpointMismatchError, E5EmbeddingMixin
from e5mistral.testing import (
    WITHOUT_E5MISTRAL,
    BACKBONES,
    assert_close,
    fresh_process_env,
    make_tiny_backbone_model,
    make_tiny_family_checkpoint,
    tiny_backbone_config,
)

TEXTS = [
    "how tall is mont blanc",
    "Mont Blanc rises 4,806 metres above sea level and is the highest peak of the Alps.",
    "hi",
    "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.",
]
FAMILY_MODELS = {  # transformers' own base model of each family
    "mistral": "MistralModel",
    "llama": "LlamaModel",
    "qwen2": "Qwen2Model",
    "qwen3": "Qwen3Model",
    "gemma": "GemmaModel",
    "gemma2": "Gemma2Model",
    "gemma3_text": "Gemma3TextModel",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """Per family: a plain ``XForCausalLM`` checkpoint and the E5 folder saved from it."""
    out = {}
    for seed, backbone in enumerate(BACKBONES):
        root = tmp_path_factory.mktemp(backbone)
        plain = make_tiny_family_checkpoint(backbone, root / f"plain-{backbone}", seed=seed)
        model = E5MistralModel.from_pretrained(plain)
        out[backbone] = (plain, save_model_folder(model, tokenizer, root / f"e5-{backbone}"))
    return out


def batch_for(tokenizer, texts, padding_side):
    tokenizer.padding_side = padding_side
    return tokenizer(texts, padding=True, return_tensors="pt")


def family_embeddings(plain, tokenizer, texts, padding_side):
    """The oracle: the family's own AutoModel, last-token pooling and L2 norm, written out here."""
    backbone = AutoModel.from_pretrained(plain).eval()
    assert type(backbone).__module__.startswith("transformers.models."), type(backbone)
    batch = batch_for(tokenizer, texts, padding_side)
    with torch.no_grad():
        hidden = backbone(**batch).last_hidden_state  # (B, T, H)
    if padding_side == "left":
        pooled = hidden[:, -1]
    else:
        pooled = hidden[torch.arange(len(texts)), batch["attention_mask"].sum(1) - 1]
    return F.normalize(pooled, p=2, dim=-1)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_embeddings_equal_the_family_model_through_the_class_and_automodel(folders, tokenizer, backbone, padding_side):
    plain, e5 = folders[backbone]
    expected = family_embeddings(plain, tokenizer, TEXTS, padding_side)
    alone = torch.cat([family_embeddings(plain, tokenizer, [text], padding_side) for text in TEXTS])
    assert_close(expected, alone, rtol=1e-5, what="padded vs one text at a time")

    family_class = getattr(transformers, FAMILY_MODELS[backbone])
    batch = batch_for(tokenizer, TEXTS, padding_side)
    for loader in (E5MistralModel.from_pretrained, AutoModel.from_pretrained):  # AutoModel: registered by the package
        model = loader(e5).eval()
        assert type(model) is E5_MODEL_CLASSES[backbone] and isinstance(model, family_class)
        assert model.config.backbone == backbone
        with torch.no_grad():
            got = model(**batch).pooler_output
        assert_close(got, expected, rtol=1e-5, what=f"{backbone} {loader.__qualname__}")
    assert_close(E5Embedder(model, tokenizer, batch_size=3).encode(TEXTS), expected, rtol=1e-5, what="E5Embedder")

    # The check has teeth: the same model with its biases and norms reset embeds differently.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                param.fill_(0.0 if name.endswith(".bias") else 1.0)
        reset = model(**batch).pooler_output
    assert (reset - expected).norm() > 1e-2 * expected.norm()


@pytest.mark.parametrize("causal_lm", [True, False], ids=["for-causal-lm", "base-model"])
def test_plain_family_checkpoints_load_as_their_own_family_with_every_weight(tmp_path, causal_lm):
    for seed, backbone in enumerate(BACKBONES):
        plain = make_tiny_family_checkpoint(backbone, tmp_path / backbone, seed=seed, causal_lm=causal_lm)
        assert json.loads((plain / "config.json").read_text())["model_type"] == backbone
        config = E5MistralConfig.from_pretrained(plain)
        assert config.backbone == backbone and config.model_type == "e5_mistral"
        model, info = E5MistralModel.from_pretrained(plain, output_loading_info=True)
        assert type(model) is E5_MODEL_CLASSES[backbone]
        assert not info["missing_keys"] and not info["mismatched_keys"]
        # every backbone tensor of the checkpoint landed, unchanged; only lm_head was left out
        saved = {k.removeprefix("model."): v for k, v in load_file(plain / "model.safetensors").items()}
        state = model.state_dict()
        assert set(saved) - set(state) == ({"lm_head.weight"} if causal_lm and "lm_head.weight" in saved else set())
        assert set(state) <= set(saved)
        for key, value in state.items():
            assert torch.equal(value, saved[key]), key
        biases_and_norms = [k for k in state if k.endswith(".bias") or "norm" in k]
        assert biases_and_norms and all(not torch.all(state[k] == 0) for k in biases_and_norms)


def test_saved_folders_record_their_family_and_reload_their_config(folders, hub_code):
    for backbone, (plain, e5) in folders.items():
        config = json.loads((e5 / "config.json").read_text())
        name = E5_MODEL_CLASSES[backbone].__name__
        assert config["model_type"] == "e5_mistral" and config["backbone"] == backbone
        assert config["architectures"] == [name]
        assert config["auto_map"] == {
            "AutoConfig": "configuration_e5mistral.E5MistralConfig",
            "AutoModel": f"modeling_e5mistral.{name}",
        }
        for file in [*hub_code, "modules.json", "1_Pooling/config.json"]:
            assert (e5 / file).is_file(), file
        loaded = AutoConfig.from_pretrained(e5)
        assert type(loaded) is E5MistralConfig and loaded.backbone == backbone
        assert E5MistralConfig(**loaded.to_dict()).to_dict() == loaded.to_dict()
        # it carries the family's own configuration, field for field
        own = AutoConfig.from_pretrained(plain)
        assert type(loaded.to_backbone_config()) is type(own)
        skip = {"architectures", "dtype", "transformers_version", "model_type", "_name_or_path"}
        assert {k: v for k, v in own.to_dict().items() if k not in skip} == {
            k: v for k, v in loaded.to_dict().items() if k in own.to_dict() and k not in skip
        }


def test_constructor_and_from_config_build_the_family_the_config_names():
    for backbone in BACKBONES:
        config = tiny_backbone_config(backbone)
        for model in (E5MistralModel(config), AutoModel.from_config(config)):
            assert type(model) is E5_MODEL_CLASSES[backbone] and isinstance(model, E5EmbeddingMixin)
            assert isinstance(model, getattr(transformers, FAMILY_MODELS[backbone]))
    assert type(E5MistralModel(tiny_backbone_config("mistral"))) is E5MistralModel  # Mistral unchanged
    assert E5MistralConfig().backbone == "mistral"
    assert E5MistralConfig(**transformers.Qwen2Config().to_dict()).backbone == "qwen2"
    with pytest.raises(ValueError, match="E5Qwen2Model is the 'qwen2' family but config.backbone is 'llama'"):
        E5_MODEL_CLASSES["qwen2"](tiny_backbone_config("llama"))
    with pytest.raises(ValueError, match="backbone 'bert' is not supported.*mistral, llama, qwen2, qwen3"):
        E5MistralConfig(backbone="bert")
    with pytest.raises(ValueError, match="'gemma3' is not supported.*gemma3_text"):
        E5MistralConfig(model_type="gemma3")


@pytest.mark.parametrize("backbone", ["gemma", "gemma2", "gemma3_text"])
def test_gemma_scales_embeddings_by_sqrt_hidden(tokenizer, backbone):
    model = make_tiny_backbone_model(backbone, tokenizer)
    ids = tokenizer(["hello there"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        first = model(input_ids=ids, output_hidden_states=True).hidden_states[0]
    expected = model.embed_tokens.weight[ids] * torch.tensor(model.config.hidden_size**0.5)
    assert_close(first, expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Checkpoints whose weights do not all land are refused.
def test_qwen2_checkpoint_labelled_mistral_is_refused_not_loaded_without_its_biases(folders, tmp_path):
    plain, e5 = folders["qwen2"]
    mislabelled = tmp_path / "mislabelled"
    shutil.copytree(plain, mislabelled)
    config = json.loads((mislabelled / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (mislabelled / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError) as err:
        E5MistralModel.from_pretrained(mislabelled)
    message = str(err.value)
    assert "not in the model (would be dropped): model.layers.0.self_attn.k_proj.bias" in message
    assert "'qwen2', not 'mistral'" in message and "E5MistralModel" in message

    # the same through AutoModel, from an E5 folder whose backbone was edited
    edited = tmp_path / "edited"
    shutil.copytree(e5, edited)
    config = json.loads((edited / "config.json").read_text())
    config["backbone"] = "mistral"
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="q_proj.bias"):
        AutoModel.from_pretrained(edited)


@pytest.mark.parametrize(
    "backbone, edit, expected",
    [
        ("qwen3", "drop", r"not in the checkpoint \(would stay random\): layers\.1\.self_attn\.k_norm\.weight"),
        ("gemma2", "add", r"not in the model \(would be dropped\): layers\.0\.mlp\.extra\.weight"),
    ],
    ids=["missing-weight", "unexpected-weight"],
)
def test_checkpoint_with_a_missing_or_extra_weight_is_refused(folders, tmp_path, backbone, edit, expected):
    _, e5 = folders[backbone]
    broken = tmp_path / "broken"
    shutil.copytree(e5, broken)
    weights = load_file(broken / "model.safetensors")
    if edit == "drop":
        del weights["layers.1.self_attn.k_norm.weight"]
    else:
        weights["layers.0.mlp.extra.weight"] = torch.ones(3)
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match=expected):
        E5MistralModel.from_pretrained(broken)
    with pytest.raises(CheckpointMismatchError, match=expected):
        AutoModel.from_pretrained(broken)


# ---------------------------------------------------------------------------------------------
# One fresh process, without e5mistral, for every family: remote code and Sentence-Transformers.
REMOTE = WITHOUT_E5MISTRAL + textwrap.dedent(
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    folders, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = {}
    for backbone, folder in folders.items():
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
        out[backbone] = {"class": type(model).__name__, "module": type(model).__module__}
        for side in ["left", "right"]:
            tokenizer.padding_side = side
            st.tokenizer.padding_side = side
            batch = tokenizer(texts, padding=True, return_tensors="pt")
            with torch.no_grad():
                out[backbone]["auto-" + side] = model(**batch).pooler_output.tolist()
            out[backbone]["st-" + side] = st.encode(texts, prompt_name="document", convert_to_tensor=True).tolist()
    print(json.dumps(out))
    """
)


def test_every_family_loads_with_remote_code_and_sentence_transformers_without_e5mistral(folders, tokenizer, tmp_path):
    env = fresh_process_env(tmp_path)
    e5_folders = {backbone: str(e5) for backbone, (_, e5) in folders.items()}
    proc = subprocess.run(  # the return code is asserted below, with stderr
        [sys.executable, "-I", "-c", REMOTE, json.dumps(e5_folders), json.dumps(TEXTS)],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == set(BACKBONES)
    for backbone, (plain, _) in folders.items():
        got = out[backbone]
        assert got["class"] == E5_MODEL_CLASSES[backbone].__name__
        assert got["module"].startswith("transformers_modules"), got["module"]  # the folder's own code ran
        for side in ["left", "right"]:
            expected = family_embeddings(plain, tokenizer, TEXTS, side)
            for key in [f"auto-{side}", f"st-{side}"]:
                assert_close(torch.tensor(got[key]), expected, rtol=1e-5, what=f"{backbone} {key}")
