"""Padding-free (packed) batches: the same embeddings and gradients as padded batches, no padding computed.

The oracle is always the padded batch through the same model (transformers' own masked attention).
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from e5mistral import E5Embedder
from e5mistral.packing import PACKED_ATTENTION, check_packable, pack_features
from e5mistral.testing import (
    assert_close,
    make_tiny_backbone_model,
    make_tiny_model,
    make_tiny_tokenizer,
    sgd_step_arguments,
)
from e5mistral.training.arguments import LORA_TARGET_MODULES
from e5mistral.training.gradcache import grad_cache
from e5mistral.training.loss import info_nce
from e5mistral.training.trainer import E5Trainer, _embed, _embed_packed

TOKENIZER = make_tiny_tokenizer()
LEFT_TOKENIZER = make_tiny_tokenizer(padding_side="left")
TEXTS = [
    "a",
    "a much longer text about rivers, mountains and the lakes between them, and the castles on their shores",
    "mid size text",
    "",
    "the tiger crossed the bridge over the river",
    "coffee",
]


def padded(texts=TEXTS, tokenizer=TOKENIZER):
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def grads_of(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


FAMILIES = [
    ("mistral", {}),
    ("mistral", {"sliding_window": 6}),  # texts longer than the window: a per-text band mask
    ("llama", {}),  # attention and MLP biases
    ("qwen2", {}),  # q/k/v biases
    ("qwen3", {}),  # q/k norms
    ("gemma", {}),
    ("gemma2", {"attn_logit_softcapping": None}),  # without soft-capping, which packing refuses
    ("gemma3_text", {}),  # sliding and full layers, q/k norms
]


@pytest.mark.parametrize("pooling", ["last_token", "mean"])
@pytest.mark.parametrize(("backbone", "overrides"), FAMILIES)
def test_packed_embeddings_equal_padded(backbone, overrides, pooling):
    model = make_tiny_backbone_model(backbone, TOKENIZER, pooling=pooling, **overrides)
    batch = padded()
    expected = model(**batch).pooler_output  # (B, H)
    implementation = model.config._attn_implementation
    actual = model(**pack_features(batch)).pooler_output
    assert model.config._attn_implementation == implementation  # switched for the packed forward only
    assert actual.shape == expected.shape
    assert_close(actual, expected, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_left_padding_and_eager_pack_to_the_same_embeddings(implementation):
    model = make_tiny_backbone_model("qwen2", LEFT_TOKENIZER)
    model.config._attn_implementation = implementation
    batch = padded(tokenizer=LEFT_TOKENIZER)
    assert_close(model(**pack_features(batch)).pooler_output, model(**batch).pooler_output, rtol=1e-5)


def test_pack_features_keeps_only_real_tokens():
    batch = padded()
    packed = pack_features(batch)
    lengths = batch["attention_mask"].sum(1)
    assert packed["input_ids"].shape == (1, int(lengths.sum()))
    assert packed["cu_seq_lens_q"].dtype == torch.int32
    assert packed["cu_seq_lens_q"].tolist() == [0, *lengths.cumsum(0).tolist()]
    assert packed["max_length_q"] == packed["max_length_k"] == int(lengths.max())
    for i, (start, end) in enumerate(zip(packed["cu_seq_lens_q"][:-1], packed["cu_seq_lens_q"][1:])):
        assert packed["input_ids"][0, start:end].tolist() == batch["input_ids"][i, : lengths[i]].tolist()
        assert packed["position_ids"][0, start:end].tolist() == list(range(int(lengths[i])))
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        pack_features({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0], [0, 0, 0]])})


def test_packed_forward_computes_no_padding_and_builds_no_mask(monkeypatch):
    model = make_tiny_backbone_model("gemma3_text", TOKENIZER)  # sliding and full masks both skipped
    batch = padded()
    seen_tokens, mask_calls, attention_calls = [], [], []
    model.embed_tokens.register_forward_hook(lambda module, args, out: seen_tokens.append(args[0].numel()))
    for name, function in list(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.items()):
        counted = partial(lambda f, n, *a, **k: (mask_calls.append(n), f(*a, **k))[1], function, name)
        monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, name, counted)
    varlen = ALL_ATTENTION_FUNCTIONS._global_mapping[PACKED_ATTENTION]
    counted = lambda *a, **k: (attention_calls.append(1), varlen(*a, **k))[1]
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, PACKED_ATTENTION, counted)

    model(**batch)
    assert mask_calls and not attention_calls  # the padded oracle: masks, transformers' sdpa
    mask_calls.clear()
    seen_tokens.clear()
    model(**pack_features(batch))
    assert seen_tokens == [int(batch["attention_mask"].sum())]  # only real tokens enter the backbone
    assert mask_calls == []  # no (N x N) mask built
    assert len(attention_calls) == model.config.num_hidden_layers  # the per-text attention ran in every layer


def info_nce_loss(queries, documents):
    return info_nce(queries, documents, None, 0.05)


# float64, as some gradients (a v_proj bias's: nearly cancelling sums) are too small for float32 rounding;
# Gemma's norms still compute in float32, hence its looser tolerance.
@pytest.mark.parametrize(("backbone", "rtol"), [("mistral", 1e-9), ("qwen2", 1e-9), ("qwen3", 1e-9), ("gemma3_text", 1e-6)])
def test_packed_gradients_equal_padded_plain_and_gradcache(backbone, rtol):
    model = make_tiny_backbone_model(backbone, TOKENIZER).double().train()
    queries, documents = padded(TEXTS[:3]), padded(TEXTS[3:] + ["another document about the planet"] * 3)

    loss, _ = info_nce_loss(_embed(model, queries), _embed(model, documents))
    loss.backward()
    expected = grads_of(model)
    assert all(grad.abs().sum() > 0 for grad in expected.values())
    model.zero_grad()

    packed_loss, _ = info_nce_loss(_embed_packed(model, queries), _embed_packed(model, documents))
    packed_loss.backward()
    assert_close(packed_loss, loss, rtol=rtol)
    for name, grad in grads_of(model).items():
        assert_close(grad, expected[name], rtol=rtol, what=name)
    model.zero_grad()

    for limits in (dict(mini_batch_size=2), dict(max_positions=20, packed=True)):  # rows; tokens per packed forward
        model.zero_grad()
        cached_loss, _ = grad_cache(model, _embed_packed, [queries, documents], info_nce_loss, **limits)
        cached_loss.backward()
        assert_close(cached_loss, loss, rtol=rtol)
        for name, grad in grads_of(model).items():
            assert_close(grad, expected[name], rtol=rtol, what=name)


def test_peft_lora_model_passes_the_packed_arguments_through():
    lora = LoraConfig(r=4, target_modules=LORA_TARGET_MODULES, task_type="FEATURE_EXTRACTION", init_lora_weights="gaussian")
    model = get_peft_model(make_tiny_backbone_model("qwen3", TOKENIZER), lora)
    batch = padded()
    assert_close(model(**pack_features(batch)).pooler_output, model(**batch).pooler_output, rtol=1e-5)


def _rows(n: int):
    from e5mistral.testing import make_training_rows

    rows = make_training_rows(n)
    for i, row in enumerate(rows):  # very different lengths
        row["positive"] = row["positive"] + " and the river by the old castle" * (i % 4)
    from datasets import Dataset

    return Dataset.from_list(rows)


@pytest.mark.parametrize(
    "options",
    [{}, {"mini_batch_size": 3}, {"mini_batch_positions": 24}, {"lora": True}, {"lora": True, "mini_batch_size": 2}],
    ids=["plain", "gradcache", "gradcache-tokens", "lora", "lora-gradcache"],
)
def test_trainer_padding_free_step_equals_the_padded_step(tmp_path, options):
    options = dict(options)
    lora = options.pop("lora", False)
    peft_config = (
        LoraConfig(r=4, target_modules=LORA_TARGET_MODULES, task_type="FEATURE_EXTRACTION", init_lora_weights="gaussian")
        if lora
        else None
    )
    rows, base = _rows(8), make_tiny_model(TOKENIZER)
    results = []
    for padding_free in (False, True):
        torch.manual_seed(0)
        trainer = E5Trainer(
            copy.deepcopy(base).train(),
            sgd_step_arguments(tmp_path, padding_free=padding_free, **options),
            train_dataset=rows,
            processing_class=TOKENIZER,
            peft_config=peft_config,
        )
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        output = trainer.train()
        results.append((output.training_loss, {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    (loss, weights), (packed_loss, packed_weights) = results
    assert_close(packed_loss, loss, rtol=1e-5, what="loss")
    moved = 0
    for key, value in weights.items():
        assert_close(packed_weights[key], value, rtol=1e-5, what=key)
        moved += int(not torch.equal(value, start[key]))
    assert moved > 0


def test_embedder_padding_free_equals_the_padded_embedder():
    model = make_tiny_backbone_model("llama", TOKENIZER)
    texts = TEXTS * 3
    expected = E5Embedder(model, TOKENIZER, batch_size=4).encode(texts)
    assert_close(E5Embedder(model, TOKENIZER, batch_size=4, padding_free=True).encode(texts), expected, rtol=1e-5)


def test_refusals_say_what_the_value_and_the_fix(tmp_path):
    bidirectional = make_tiny_model(TOKENIZER, bidirectional=True)
    with pytest.raises(ValueError, match=r"padding_free=True with bidirectional=True.*padding_free=False"):
        E5Trainer(bidirectional, sgd_step_arguments(tmp_path, padding_free=True), train_dataset=_rows(8), processing_class=TOKENIZER)
    with pytest.raises(ValueError, match="bidirectional=True"):
        bidirectional(**pack_features(padded()))  # the model itself refuses too, never a silent wrong result

    softcapped = make_tiny_backbone_model("gemma2", TOKENIZER)  # attn_logit_softcapping 50.0, eager
    with pytest.raises(ValueError, match=r"attn_logit_softcapping=50.0 under 'eager'.*flash_attention_2"):
        E5Embedder(softcapped, TOKENIZER, padding_free=True)
    with pytest.raises(ValueError, match=r"soft-capping \(50.0\).*flash_attention_2"):
        softcapped(**pack_features(padded()))

    config = copy.deepcopy(make_tiny_model(TOKENIZER).config)
    config._attn_implementation = "paged|sdpa"
    with pytest.raises(ValueError, match=r"'paged\|sdpa' is not known.*padding_free=False"):
        check_packable(config)


def test_the_eos_check_reads_each_packed_texts_last_token(caplog):
    model = make_tiny_model(TOKENIZER)
    batch = padded()
    with caplog.at_level("WARNING"):
        model(**pack_features(batch))
    assert "not EOS" not in caplog.text  # every text ends with EOS
    no_eos = pack_features({"input_ids": batch["input_ids"][:, :-1], "attention_mask": batch["attention_mask"][:, :-1]})
    with caplog.at_level("WARNING"):
        model(**no_eos)  # the longest text lost its EOS: row 1
    assert "not EOS" in caplog.text and "in row 1" in caplog.text
