"""E5Trainer on a tiny model: one step equals a hand-written SGD step (plain, GradCache, LoRA,
checkpointing), evaluation equals a brute-force ranking, the merged folder embeds like the
trained model, and the sampler options reach the batches."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModel, EarlyStoppingCallback

from e5mistral import E5Embedder, E5MistralModel, format_query
from e5mistral.merging import load_for_merge
from e5mistral.testing import (
    assert_close,
    make_tiny_model,
    make_tiny_model_folder,
    make_tiny_tokenizer,
    sgd_step_arguments,
)
from e5mistral.training.arguments import LORA_TARGET_MODULES
from e5mistral.training.collator import E5Collator
from e5mistral.training.loss import info_nce
from e5mistral.training.run_record import RunRecord
from e5mistral.training.trainer import E5Trainer

TOKENIZER = make_tiny_tokenizer()
WORDS = [
    "river",
    "mountain",
    "coffee",
    "engine",
    "violin",
    "planet",
    "garden",
    "castle",
    "tiger",
    "bridge",
    "candle",
    "desert",
]


def make_rows(n: int, seed: int = 0, tasks=("retrieval", "sts")) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        a, b, c = (WORDS[int(j)] for j in torch.randint(len(WORDS), (3,), generator=g))
        rows.append(
            {
                "query": f"{a} {b} {i}",
                "positive": f"about the {a} and the {b} {i}",
                "negatives": [f"about the {c} {i + 1}"] if i % 3 else [],  # 0 or 1 hard negative
                "instruction": "Find the passage",
                "task": tasks[i % len(tasks)],
                "language": "en",
            }
        )
    return Dataset.from_list(rows)


args = sgd_step_arguments  # one plain SGD step, comparable with manual_sgd_step


def manual_sgd_step(model, rows, lr=0.5, temperature=0.05):
    """The step by hand: collate all rows, InfoNCE on pooled outputs, p -= lr * grad."""
    model = copy.deepcopy(model).train()
    batch = E5Collator(TOKENIZER, num_negatives=1)(list(rows))
    q = model(**batch["query"]).pooler_output  # (B, H)
    d = model(**batch["document"]).pooler_output  # (D, H)
    loss, _ = info_nce(q, d, None, temperature, batch["document_ids"])
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return {k: v.detach() for k, v in model.state_dict().items()}


def assert_weights_equal(actual, expected, start):
    moved = 0
    for key, value in expected.items():
        assert_close(actual[key], value, rtol=1e-5)
        moved += int(not torch.allclose(value, start[key]))
    assert moved > 0


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"chunk_positions": 0},  # one forward per side
        {"chunk_positions": 16},  # several length-sorted chunks per side
        {"mini_batch_size": 2},
        {"mini_batch_size": 3, "activation_checkpointing": True},
        {"mini_batch_positions": 24},  # GradCache with a token budget
        {"mini_batch_positions": 40, "mini_batch_size": 3},
        {"padding_free": True},  # queries and documents packed in one row
        {"padding_free": True, "mini_batch_positions": 24},
    ],
)
def test_one_step_equals_the_hand_written_sgd_step(tmp_path, options):
    rows = make_rows(8)
    model = make_tiny_model(TOKENIZER)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = manual_sgd_step(model, rows)
    trainer = E5Trainer(
        copy.deepcopy(model).train(), args(tmp_path, **options), train_dataset=rows, processing_class=TOKENIZER
    )
    trainer.train()
    assert_weights_equal(trainer.model.state_dict(), expected, start)


@pytest.mark.parametrize("options", [{"chunk_positions": 0}, {"padding_free": True}, {"mini_batch_size": 64}])
def test_queries_and_documents_share_one_forward_when_they_fit(tmp_path, options):
    rows = make_rows(8)
    model = make_tiny_model(TOKENIZER).train()
    trainer = E5Trainer(model, args(tmp_path, **options), train_dataset=rows, processing_class=TOKENIZER)
    batch = next(iter(trainer.get_train_dataloader()))
    calls = []
    hook = model.register_forward_pre_hook(lambda module, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    trainer.compute_loss(model, batch).backward()
    hook.remove()
    sides = (batch["query"], batch["document"])
    texts = sum(side["input_ids"].shape[0] for side in sides)  # 8 queries, 16 documents
    tokens = sum(int(side["attention_mask"].sum()) for side in sides)
    # one forward of all 24 texts (GradCache: no replay, the one forward kept its graph); packed: one row of them all
    assert len(calls) == 1 and (calls[0] == (1, tokens) if options.get("padding_free") else calls[0][0] == texts), calls


def test_lora_with_gradcache_equals_lora_plain(tmp_path):
    rows = make_rows(8)
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=LORA_TARGET_MODULES,
        task_type="FEATURE_EXTRACTION",
        init_lora_weights="gaussian",
    )  # B != 0 so every adapter weight gets a gradient at step 1
    results = []
    for options in ({}, {"mini_batch_size": 2, "activation_checkpointing": True}):
        torch.manual_seed(0)
        trainer = E5Trainer(
            make_tiny_model(TOKENIZER).train(),
            args(tmp_path, **options),
            train_dataset=rows,
            processing_class=TOKENIZER,
            peft_config=lora,
        )
        start = {k: v.clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
        trainer.train()
        results.append({k: v for k, v in trainer.model.state_dict().items() if "lora_" in k})
    assert len(start) == 2 * 7 * 2  # A and B on 7 projections in 2 layers
    assert_weights_equal(results[1], results[0], start)


def test_evaluation_equals_a_brute_force_ranking_and_drives_best_model_selection(tmp_path):
    train, dev = make_rows(32, seed=1), make_rows(12, seed=2)
    trainer = E5Trainer(
        make_tiny_model(TOKENIZER).train(),
        args(
            tmp_path,
            max_steps=4,
            optim="adamw_torch",
            learning_rate=1e-3,
            max_grad_norm=1.0,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="steps",
            save_steps=2,
            logging_steps=1,
            metric_for_best_model="ndcg@10",
            load_best_model_at_end=True,
        ),
        train_dataset=train,
        eval_dataset=dev,
        processing_class=TOKENIZER,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=5)],
    )
    trainer.train()
    assert trainer.state.best_metric is not None and trainer.state.best_model_checkpoint is not None
    assert any("accuracy" in entry and "loss" in entry for entry in trainer.state.log_history)

    metrics = trainer.evaluate()
    # brute force: every dev query against every distinct dev document; reciprocal rank of its positive
    documents = list(dict.fromkeys([*dev["positive"], *(n for negs in dev["negatives"] for n in negs)]))
    embedder = E5Embedder(trainer.model, TOKENIZER)
    q = embedder.encode([format_query(i, t) for i, t in zip(dev["instruction"], dev["query"])])
    d = embedder.encode(documents)
    reciprocal_ranks = []
    for i, positive in enumerate(dev["positive"]):
        scores = (q[i] @ d.T).tolist()
        rank = 1 + sum(s > scores[documents.index(positive)] for s in scores)
        reciprocal_ranks.append(1 / rank if rank <= 10 else 0.0)
    assert metrics["eval_mrr@10"] == pytest.approx(sum(reciprocal_ranks) / len(reciprocal_ranks), rel=1e-5, abs=1e-12)
    assert {"eval_ndcg@10", "eval_recall@1", "eval_recall@100"} <= set(metrics)


@pytest.mark.parametrize("pooling, bidirectional", [("last_token", False), ("mean", False), ("last_token", True)])
def test_merged_folder_embeds_like_the_trained_lora_model(tmp_path, pooling, bidirectional):
    """Also with a pooling (`pooling: mean`) or attention (`bidirectional: true`) set at load time, which
    the merged folder must keep; the adapter kept beside it merges (e5mistral.merging) to the same model."""
    base = make_tiny_model_folder(tmp_path / "base")

    model = E5MistralModel.from_pretrained(base, pooling=pooling, bidirectional=bidirectional)
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.1, target_modules=LORA_TARGET_MODULES, task_type="FEATURE_EXTRACTION"
    )
    trainer = E5Trainer(
        model.train(),
        args(tmp_path, max_steps=3, optim="adamw_torch", learning_rate=1e-2, keep_adapter=True),
        train_dataset=make_rows(16),
        processing_class=TOKENIZER,
        peft_config=lora,
    )
    trainer.train()
    folder = trainer.save_merged_model(str(tmp_path / "final"))
    assert (folder / "adapter" / "adapter_config.json").exists()
    texts = ["about the river and the coffee 3", "tiger bridge"]
    trained = E5Embedder(trainer.model, TOKENIZER).encode(texts)
    reloaded = E5Embedder(AutoModel.from_pretrained(folder), TOKENIZER).encode(texts)
    assert AutoModel.from_pretrained(folder).config.pooling == pooling
    assert AutoModel.from_pretrained(folder).config.bidirectional is bidirectional
    untrained = E5Embedder(E5MistralModel.from_pretrained(base, pooling=pooling), TOKENIZER).encode(texts)
    assert_close(reloaded, trained, rtol=1e-5)
    from_adapter, _ = load_for_merge(folder / "adapter")  # its settings come from the folder it was kept in
    assert from_adapter.config.bidirectional is bidirectional and from_adapter.config.pooling == pooling
    assert_close(E5Embedder(from_adapter, TOKENIZER).encode(texts), trained, rtol=1e-5)
    assert not torch.allclose(untrained, trained, atol=1e-3)


def test_a_plain_trainer_run_saves_its_record_and_card_with_the_weights(tmp_path):
    """What scripts/train.py leaves next to the weights comes from the trainer's final save itself."""
    base = make_tiny_model_folder(tmp_path / "base")
    rows, dev = make_rows(16), make_rows(8, seed=1)
    trainer = E5Trainer(
        E5MistralModel.from_pretrained(base).train(),
        args(tmp_path, max_steps=2),
        train_dataset=rows,
        eval_dataset=dev,
        processing_class=TOKENIZER,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    folder = trainer.save_merged_model(str(tmp_path / "final"))
    assert {"training_args.json", "trainer_state.json", "training_info.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    info = json.loads((folder / "training_info.json").read_text())
    assert info["base_model"] == str(base) and info["num_train_rows"] == 16 and info["dataset"] is None
    assert info["held_out_evaluation"]["rows"] == 8
    assert info["held_out_evaluation"]["before"]["ndcg@10"] == before["eval_ndcg@10"]
    assert info["held_out_evaluation"]["after"]["ndcg@10"] == after["eval_ndcg@10"]
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == 2
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "Held-out retrieval during training" in card
    # a RunRecord passed in `callbacks` is the one the save writes from
    named = RunRecord(base_model="my-org/base", dataset="my-org/rows")
    trainer = E5Trainer(make_tiny_model(TOKENIZER), args(tmp_path), processing_class=TOKENIZER, callbacks=[named])
    assert trainer.run_record is named
    assert sum(isinstance(c, RunRecord) for c in trainer.callback_handler.callbacks) == 1


def test_same_task_and_no_duplicate_batches_reach_the_loss(tmp_path):
    rows = make_rows(48, tasks=("a", "b", "c"))
    seen = []

    class Recording(E5Collator):
        def __call__(self, batch):
            seen.append(batch)
            return super().__call__(batch)

    trainer = E5Trainer(
        make_tiny_model(TOKENIZER).train(),
        args(tmp_path, max_steps=4, same_task_batches=True, no_duplicates_in_batch=True, per_device_train_batch_size=4),
        train_dataset=rows,
        processing_class=TOKENIZER,
        data_collator=Recording(TOKENIZER),
    )
    trainer.train()
    assert len(seen) >= 4  # the data loader may collate one batch ahead
    for batch in seen:
        assert len(batch) == 4 and len({row["task"] for row in batch}) == 1
        texts = [t for row in batch for t in {row["query"], row["positive"], *row["negatives"]}]
        assert len(texts) == len(set(texts))


def test_arguments_reject_bad_values_with_the_field_name(tmp_path):
    for field, value in (("temperature", 0.0), ("mini_batch_size", 0), ("query_max_length", 1), ("num_negatives", -1)):
        with pytest.raises(ValueError, match=field):
            args(tmp_path, **{field: value})
