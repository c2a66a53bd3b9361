"""The `bidirectional` option: the causal mask removed for every family, padding still masked.

The oracle is the first layer's attention written out by hand here (the family's q/k/v projections
and q/k norms, RoPE computed from the config, the family's scaling and soft-capping, a softmax
over every non-padding key, no causal mask; a sliding-window layer keeps |i - j| <= window), for
left and right padding. Then: a token's state depends on later tokens (not with the causal
default), and a bidirectional folder embeds the same through the class, ``AutoModel``,
``AutoModel(trust_remote_code=True)`` and Sentence-Transformers in a process without e5mistral.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel

from e5mistral import E5MistralConfig, E5MistralModel, save_model_folder
from e5mistral.hub import render_model_card
from e5mistral.testing import (
    WITHOUT_E5MISTRAL,
    BACKBONES,
    assert_close,
    fresh_process_env,
    make_tiny_backbone_model,
    make_tiny_family_checkpoint,
)

TEXTS = ["river mountain coffee engine violin planet garden castle tiger bridge", "hi", "a tiger on the bridge"]
CASES = [(b, {}) for b in BACKBONES] + [("mistral", {"sliding_window": 4})]  # a Mistral whose window matters


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def attention_by_hand(attn, config, x, mask, causal=False):
    """Layer 0's attention output for input states ``x`` `(B, T, H)` and padding ``mask`` `(B, T)`."""
    B, T, _ = x.shape
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or config.hidden_size // nh
    q = attn.q_proj(x).view(B, T, nh, hd)  # (B, T, nh, hd)
    k = attn.k_proj(x).view(B, T, nkv, hd)
    v = attn.v_proj(x).view(B, T, nkv, hd)
    if hasattr(attn, "q_norm"):  # Qwen3, Gemma 3: RMS norm per head, before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    layer_type = (getattr(config, "layer_types", None) or ["full_attention"])[0]
    sliding = layer_type == "sliding_attention" or (config.backbone == "mistral" and config.sliding_window is not None)
    rope = config.rope_parameters
    theta = (rope[layer_type] if layer_type in rope else rope)["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # (hd/2,)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None]  # positions 0..T-1, padding included
    cos = torch.cat([angles, angles], -1).cos()[None, :, None].float()  # (1, T, 1, hd)
    sin = torch.cat([angles, angles], -1).sin()[None, :, None].float()
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k = k.repeat_interleave(nh // nkv, dim=2)  # (B, T, nh, hd)
    v = v.repeat_interleave(nh // nkv, dim=2)
    scale = getattr(config, "query_pre_attn_scalar", None) or hd
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale**-0.5  # (B, nh, T, T)
    cap = getattr(config, "attn_logit_softcapping", None)
    if cap:
        scores = torch.tanh(scores / cap) * cap
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = mask.bool()[:, None, None, :].expand(B, 1, T, T)  # keys that are not padding
    if causal:
        allowed = allowed & (j <= i)
    if sliding:  # transformers' windows: causal keeps the last `window` keys, bidirectional |i - j| <= window
        allowed = allowed & ((i - j < config.sliding_window) if causal else ((i - j).abs() <= config.sliding_window))
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)  # (B, nh, T, T)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, nh * hd)
    return attn.o_proj(out)  # (B, T, H)


def first_attention(model, batch):
    """Layer 0's attention: its input states and output, as the model computed them."""
    seen = {}
    attn = model.layers[0].self_attn
    pre = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(x=kw["hidden_states"]), with_kwargs=True)
    post = attn.register_forward_hook(lambda m, a, out: seen.update(out=out[0]))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        pre.remove()
        post.remove()
    return seen["x"], seen["out"]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("backbone, overrides", CASES, ids=[f"{b}{'-window' if o else ''}" for b, o in CASES])
def test_first_layer_attention_equals_the_hand_computed_bidirectional_attention(
    tokenizer, backbone, overrides, padding_side, implementation
):
    if backbone == "gemma2" and implementation == "sdpa":
        pytest.skip("transformers runs Gemma 2 with eager attention only")
    tokenizer.padding_side = padding_side
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any() and batch["input_ids"].shape[1] > 8  # padding, and beyond a window
    errors = {}
    for bidirectional in (True, False):
        model = make_tiny_backbone_model(backbone, tokenizer, bidirectional=bidirectional, **overrides)
        model.set_attn_implementation(implementation)
        assert model.config.bidirectional is bidirectional and model.config._attn_implementation == implementation
        x, out = first_attention(model, batch)
        mask = batch["attention_mask"]
        with torch.no_grad():
            expected = attention_by_hand(model.layers[0].self_attn, model.config, x, mask, causal=not bidirectional)
            other = attention_by_hand(model.layers[0].self_attn, model.config, x, mask, causal=bidirectional)
        real = mask.bool()  # (B, T): the real tokens' rows (what padding rows hold does not matter)
        assert_close(out[real], expected[real], rtol=1e-5, what=f"{backbone} bidirectional={bidirectional}")
        errors[bidirectional] = ((out[real] - expected[real]).norm() / expected[real].norm()).item()
        # the oracle has teeth: the other direction's attention is 100 tolerances from what the model computed
        assert (out[real] - other[real]).norm() > 1e-3 * expected[real].norm()
    print(f"{backbone} {padding_side} {implementation}: relative error {errors}")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_token_depends_on_later_tokens_only_when_bidirectional(tokenizer, backbone):
    tokenizer.padding_side = "right"
    a, b = (tokenizer([text], return_tensors="pt") for text in ("river mountain coffee", "river mountain violin"))
    assert torch.equal(a["input_ids"][:, :3], b["input_ids"][:, :3]) and not torch.equal(a["input_ids"], b["input_ids"])
    for bidirectional in (False, True):
        model = make_tiny_backbone_model(backbone, tokenizer, bidirectional=bidirectional)
        with torch.no_grad():
            ha, hb = model(**a).last_hidden_state[0, :3], model(**b).last_hidden_state[0, :3]  # (3, H): shared prefix
        if bidirectional:
            assert (ha - hb).norm() > 1e-3 * ha.norm(), f"{backbone}: the prefix ignores the later words"
        else:
            assert_close(ha, hb, rtol=1e-6, what=f"{backbone} causal prefix")


def test_config_keeps_the_option_and_refuses_unchecked_attention(tmp_path):
    config = E5MistralConfig(bidirectional=True, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    assert config.to_dict()["bidirectional"] is True and "is_causal" not in config.to_dict()
    assert E5MistralConfig(**config.to_dict()).bidirectional is True
    assert E5MistralConfig().bidirectional is False and E5MistralConfig().to_dict()["bidirectional"] is False
    assert E5MistralConfig(is_causal=False).bidirectional is True  # an llm2vec-style flag reads as the option
    model = E5MistralModel(config)
    batch = {"input_ids": torch.tensor([[5, 6, 2]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    model.config._attn_implementation = "flash_attention_2"  # as set_attn_implementation would, where installed
    refused = "bidirectional=True needs attn_implementation 'eager' or 'sdpa', not 'flash_attention_2'"
    with pytest.raises(ValueError, match=refused):
        model(**batch)
    causal = E5MistralModel(E5MistralConfig(**{**config.to_dict(), "bidirectional": False}))
    causal.config._attn_implementation = "flash_attention_2"
    from e5mistral.configuration_e5mistral import check_attention_direction

    check_attention_direction(causal.config)  # the recipe's causal model is not limited


@pytest.mark.parametrize("bidirectional", [None, True])
def test_training_flag_sets_the_option_and_refuses_flash_attention(tokenizer, tmp_path, bidirectional):
    from e5mistral.errors import UserError
    from e5mistral.testing import make_tiny_family_checkpoint as checkpoint
    from e5mistral.training.arguments import E5ModelConfig, E5TrainingArguments
    from e5mistral.training.inputs import load_model_and_tokenizer

    base = checkpoint("qwen2", tmp_path / "base")
    tokenizer.save_pretrained(base)
    training_args = E5TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    model, _ = load_model_and_tokenizer(
        E5ModelConfig(model_name_or_path=str(base), bidirectional=bidirectional), training_args
    )
    assert model.config.bidirectional is bool(bidirectional)  # unset: the checkpoint's, causal for a base model
    if bidirectional:
        flash = E5ModelConfig(
            model_name_or_path=str(base), bidirectional=True, attn_implementation="flash_attention_2"
        )
        with pytest.raises(UserError, match="bidirectional=true needs attn_implementation eager or sdpa, not 'flash"):
            load_model_and_tokenizer(flash, training_args)


# ---------------------------------------------------------------------------------------------
# Every path: the class, AutoModel with the package, remote code and Sentence-Transformers without it.
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
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            auto = model(**batch).pooler_output.tolist()
        out[backbone] = {
            "module": type(model).__module__,
            "bidirectional": model.config.bidirectional,
            "auto": auto,
            "st": st.encode(texts, prompt_name="document", convert_to_tensor=True).tolist(),
        }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def bidirectional_folders(tmp_path_factory, tokenizer):
    out = {}
    for seed, backbone in enumerate(BACKBONES):
        root = tmp_path_factory.mktemp(f"bi-{backbone}")
        plain = make_tiny_family_checkpoint(backbone, root / "plain", seed=seed)
        model = E5MistralModel.from_pretrained(plain, bidirectional=True).eval()
        # Random biases near 1 swamp the tiny (std 0.02) value and output projections, so attention hardly moves
        # a Llama or Qwen2 embedding; scale those projections up (and their biases down) so the direction shows.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("v_proj.weight", "o_proj.weight", "v_proj.bias", "o_proj.bias")):
                    param.mul_(0.01 if name.endswith("bias") else 10.0)
        folder = save_model_folder(model, tokenizer, root / "e5")
        out[backbone] = (folder, model, E5MistralModel.from_pretrained(folder, bidirectional=False).eval())
    return out


def test_bidirectional_folders_embed_alike_through_every_path(bidirectional_folders, tokenizer, tmp_path):
    tokenizer.padding_side = "right"
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    expected = {}
    for backbone, (folder, model, causal) in bidirectional_folders.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["bidirectional"] is True and "is_causal" not in config
        with torch.no_grad():
            expected[backbone] = model(**batch).pooler_output
            # the option changes the embedding, by 100 times the tolerance of the comparisons below at least
            assert (causal(**batch).pooler_output - expected[backbone]).norm() > 1e-3 * expected[backbone].norm()
            assert causal.config.bidirectional is False
            for loader in (E5MistralModel.from_pretrained, AutoModel.from_pretrained):
                loaded = loader(folder).eval()
                assert loaded.config.bidirectional is True
                what = f"{backbone} {loader.__qualname__}"
                assert_close(loaded(**batch).pooler_output, expected[backbone], rtol=1e-5, what=what)
        card = render_model_card(folder, "me/tiny").content
        assert "Attention is bidirectional" in card and "| attention | bidirectional" in card

    folders = {backbone: str(folder) for backbone, (folder, _, _) in bidirectional_folders.items()}
    proc = subprocess.run(  # the return code is asserted below, with stderr
        [sys.executable, "-I", "-c", REMOTE, json.dumps(folders), json.dumps(TEXTS)],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=fresh_process_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == set(BACKBONES)
    for backbone, got in out.items():
        assert got["module"].startswith("transformers_modules") and got["bidirectional"] is True
        for key in ("auto", "st"):
            assert_close(torch.tensor(got[key]), expected[backbone], rtol=1e-5, what=f"{backbone} {key}")


def test_a_causal_folder_says_nothing_about_attention_in_its_card(tiny_folder):
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["bidirectional"] is False
    assert "bidirectional" not in render_model_card(tiny_folder, "me/tiny").content.lower()
