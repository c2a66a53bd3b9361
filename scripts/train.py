"""Train an E5-mistral embedding model: InfoNCE with in-batch, hard and cross-device negatives.

The CPU demo (tiny random model, bundled synthetic sample, a few minutes on 2 cores): trains,
evaluates retrieval on held-out rows before and after, saves a Hub-ready folder, reloads it with
``AutoModel.from_pretrained`` and prints similarities::

    python scripts/train.py --config configs/demo.yaml

The same on 2 CPU processes (DDP over gloo, documents gathered across processes)::

    accelerate launch --config_file configs/accelerate/ddp.yaml scripts/train.py --config configs/demo.yaml
    # or, without a config file (the flags the tests use):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config configs/demo.yaml --max_steps 2

The paper's recipe (Mistral-7B-v0.1, LoRA r16, batch 2048 through GradCache, ZeRO-3, 32 GPUs)::

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes 32 \\
        scripts/train.py --config configs/e5_mistral_7b.yaml --dataset_name my-org/my-synthetic-data

Any field of the YAML is also a flag, and flags win: ``--max_steps 10 --mini_batch_size 4``.
A mixture of sources: ``--dataset_name "synthetic.jsonl=0.5,my-org/msmarco-triples=0.5"``.
Resume a killed run: ``--resume_from_checkpoint outputs/e5-demo/checkpoint-40`` (or ``true`` for the last).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, set_seed
from trl import TrlParser, get_peft_config

from e5mistral import E5MistralModel, ensure_eos, format_query
from e5mistral.training.arguments import E5ModelConfig, E5ScriptArguments, E5TrainingArguments
from e5mistral.training.data import load_training_data
from e5mistral.training.trainer import E5Trainer

SHOWN_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")


def load_model_and_tokenizer(model_args: E5ModelConfig, training_args: E5TrainingArguments):
    """The base model and its tokenizer; with ``tiny_model``, a tiny random one written to a folder first."""
    path = model_args.model_name_or_path
    if model_args.tiny_model:
        from e5mistral.testing import make_tiny_model_folder

        path = str(Path(training_args.output_dir) / "tiny-base-model")
        with training_args.main_process_first(desc="writing the tiny base model"):
            if not (Path(path) / "config.json").exists():
                make_tiny_model_folder(path, seed=training_args.seed)
    if path is None:
        raise ValueError("model_name_or_path is unset: pass --model_name_or_path <Hub id or folder> (or --tiny_model).")
    tokenizer = ensure_eos(AutoTokenizer.from_pretrained(path, revision=model_args.model_revision))
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    model = E5MistralModel.from_pretrained(
        path, revision=model_args.model_revision, dtype=dtype, attn_implementation=model_args.attn_implementation
    )
    return model, tokenizer


def load_datasets(script_args: E5ScriptArguments, training_args: E5TrainingArguments):
    """Training rows and dev rows (a held-out share of the training rows unless eval_dataset_name is set)."""
    if script_args.dataset_name is None:
        raise ValueError("dataset_name is unset: pass --dataset_name <file, folder, Hub id, `sample` or a=0.7,b=0.3>.")
    with training_args.main_process_first(desc="loading the dataset"):
        train = load_training_data(
            script_args.dataset_name,
            script_args.dataset_train_split,
            script_args.dataset_config,
            seed=training_args.seed,
        )
        dev = None
        if script_args.eval_dataset_name:
            dev = load_training_data(
                script_args.eval_dataset_name,
                script_args.eval_dataset_split,
                script_args.eval_dataset_config,
                seed=training_args.seed,
            )
        elif script_args.eval_split_size > 0:
            size = script_args.eval_split_size
            split = train.train_test_split(test_size=size if size < 1 else int(size), seed=training_args.seed)
            train, dev = split["train"], split["test"]
    if script_args.max_train_rows is not None:
        train = train.select(range(min(script_args.max_train_rows, len(train))))
    return train, dev


def show_similarities(folder: Path, dev, n: int = 3) -> None:
    """Reload the saved folder as a user would and print query-document cosine similarities."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    rows = dev.select(range(min(n, len(dev))))
    queries = [format_query(i, q) for i, q in zip(rows["instruction"], rows["query"])]
    documents = list(rows["positive"])
    with torch.inference_mode():
        encode = lambda texts: (
            model(**tokenizer(texts, truncation=True, max_length=512, padding=True, return_tensors="pt")).pooler_output
        )
        scores = encode(queries) @ encode(documents).T  # (n, n), cosine: embeddings are unit norm
    print(
        f"\nReloaded {folder} with AutoModel.from_pretrained: {type(model).__name__}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters."
    )
    print("Cosine similarity of held-out queries (rows) with their positives (columns; the diagonal should win):")
    for i, query in enumerate(rows["query"]):
        cells = "  ".join(
            f"{'*' if j == int(scores[i].argmax()) else ' '}{scores[i, j]:+.3f}" for j in range(len(documents))
        )
        print(f"  q{i} {query[:48]!r:52} {cells}")


def main(script_args: E5ScriptArguments, training_args: E5TrainingArguments, model_args: E5ModelConfig) -> None:
    set_seed(training_args.seed)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    train, dev = load_datasets(script_args, training_args)
    trainer = E5Trainer(
        model,
        training_args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    is_main = trainer.accelerator.is_main_process
    if is_main:
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        world = training_args.world_size
        print(f"Training rows: {len(train)} ({dict(Counter(train['task']))}); dev rows: {len(dev) if dev else 0}")
        print(
            f"Trainable parameters: {trainable:,}{' (LoRA)' if model_args.use_peft else ''}; processes: {world}; "
            f"global batch: {training_args.per_device_train_batch_size * world} rows, each query scored against "
            f"~{training_args.per_device_train_batch_size * world * (1 + (training_args.num_negatives or 1))} documents; "
            f"GradCache mini-batch: {training_args.mini_batch_size or 'off'}; temperature {training_args.temperature}"
        )

    before = trainer.evaluate() if dev is not None else None
    resume = training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if str(resume).lower() == "true" else resume)  # "true": the last one
    after = trainer.evaluate() if dev is not None else None
    folder = trainer.save_merged_model(training_args.output_dir)

    if is_main:
        write_run_record(folder, trainer, script_args, model_args, train, dev, before, after)
        if before is not None:
            print(
                f"\nRetrieval on {len(dev)} held-out rows (each query against all {_num_docs(dev)} held-out documents):"
            )
            print(f"  {'metric':12} {'before':>8} {'after':>8}")
            for name in SHOWN_METRICS:
                print(f"  {name:12} {before['eval_' + name]:8.4f} {after['eval_' + name]:8.4f}")
        merged = " (LoRA merged)" if model_args.use_peft else ""
        print(f"\nSaved the model{merged} to {folder}: weights, code, tokenizer, Sentence-Transformers files.")
        if dev is not None:
            show_similarities(folder, dev)


def write_run_record(folder: Path, trainer, script_args, model_args, train, dev, before, after) -> None:
    """Leave the run's facts next to the weights, then render the model card from them.

    ``training_args.json``, ``trainer_state.json`` and ``training_info.json`` are what
    ``e5mistral.hub`` reads; ``README.md`` is ``model_card.md`` rendered from them (nothing typed in).
    """
    from e5mistral.hub import render_model_card

    args = trainer.args
    (folder / "training_args.json").write_text(args.to_json_string(), encoding="utf-8")
    trainer.state.save_to_json(str(folder / "trainer_state.json"))
    info = {
        "base_model": "random tiny E5MistralModel (e5mistral.testing)" if model_args.tiny_model else model_args.model_name_or_path,
        "dataset": "e5mistral/data/sample_generations.jsonl (bundled sample)"
        if script_args.dataset_name == "sample"
        else script_args.dataset_name,
        "dataset_config": script_args.dataset_config,
        "num_train_rows": len(train),
        "hyperparameters": {
            "processes": args.world_size,
            "global batch (rows)": args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
        },
    }
    if before is not None:
        info["held_out_evaluation"] = {
            "rows": len(dev),
            "before": {name: before["eval_" + name] for name in SHOWN_METRICS},
            "after": {name: after["eval_" + name] for name in SHOWN_METRICS},
        }
    (folder / "training_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    repo_id = args.hub_model_id or f"your-name/{folder.name}"
    render_model_card(folder, repo_id).save(folder / "README.md")


def _num_docs(dev) -> int:
    return len({*dev["positive"], *(n for negs in dev["negatives"] for n in negs)})


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (E5ScriptArguments, E5TrainingArguments, E5ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "train", help="Train an E5-mistral embedding model.", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types)


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
