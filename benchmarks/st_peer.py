r"""The peer run: the same LoRA, rows and schedule trained with sentence-transformers.

The quality section trains SmolLM2 twice on the docstring training split, once with this project's
``scripts/train.py`` and once here, with sentence-transformers' ``SentenceTransformerTrainer`` and
``CachedMultipleNegativesRankingLoss`` (or ``MultipleNegativesRankingLoss`` when no mini-batch is
given). Both runs share:

- the base weights and tokenizer (EOS appended by the tokenizer), the pooling (``pooling`` in the
  recipe: last token, or the mean over the tokens) and the L2 norm;
- the LoRA (rank, alpha, dropout, target modules), learning rate, warm-up, linear decay, weight
  decay, batch size, number of steps and seed;
- the query format ``Instruct: {instruction}\nQuery: {query}`` (an ST prompt) and in-batch negatives
  over distinct documents (the ``NO_DUPLICATES`` batch sampler);
- the temperature (ST's ``scale`` is ``1 / temperature``).

The LoRA is merged and the folder saved as a plain decoder checkpoint, which ``E5Embedder`` (and
``benchmarks.quality --model NAME=FOLDER``) loads as its E5 family, so both trained models are
scored by the same encoder code::

    python -m benchmarks.st_peer --config configs/smollm2_cpu.yaml --out outputs/smollm2-st
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

#: The recipe fields this run reads from a ``scripts/train.py`` config (the rest are ignored).
SHARED_FIELDS = (
    "model_name_or_path", "dataset_name", "per_device_train_batch_size", "mini_batch_size", "learning_rate",
    "warmup_steps", "weight_decay", "max_steps", "temperature", "passage_max_length", "lora_r", "lora_alpha",
    "lora_dropout", "lora_target_modules", "seed", "logging_steps", "pooling",
)
OPTIONAL_FIELDS = ("mini_batch_size", "logging_steps", "pooling")


def read_recipe(path: str) -> dict:
    """The shared fields of a training config (a YAML file of ``scripts/train.py``)."""
    config = yaml.safe_load(Path(path).read_text())
    missing = [f for f in SHARED_FIELDS if f not in config and f not in OPTIONAL_FIELDS]
    if missing:
        raise SystemExit(f"error: {path} lacks {missing}: the peer run copies them from the recipe")
    return {f: config.get(f) for f in SHARED_FIELDS}


def build_model(base: str, max_length: int, lora: dict, seed: int, pooling: str = "last_token"):
    """SentenceTransformer over ``base``: transformer, pooling (``last_token`` or ``mean``), L2 norm; LoRA added."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(seed)
    transformer = models.Transformer(base, max_seq_length=max_length, model_args={"dtype": torch.float32})
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode={"last_token": "lasttoken", "mean": "mean"}[pooling])
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    # peft directly: transformers' add_adapter wants a newer peft than this project requires
    transformer.model = get_peft_model(transformer.model, LoraConfig(task_type="FEATURE_EXTRACTION", **lora))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    if trainable != lora_params or not trainable:
        raise RuntimeError(f"the peer run must train the LoRA only: {trainable} trainable, {lora_params} LoRA")
    return model


def train_peer(recipe: dict, out: str) -> dict:
    """Train the recipe with sentence-transformers; save the merged model to ``out``; return timings."""
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.training_args import BatchSamplers

    rows = load_dataset("json", data_files=recipe["dataset_name"], split="train")
    instructions = set(rows["instruction"])
    if len(instructions) != 1:
        raise SystemExit(f"error: the peer run takes one instruction per dataset; found {len(instructions)}")
    prompt = f"Instruct: {instructions.pop()}\nQuery: "
    rows = rows.select_columns(["query", "positive"]).rename_column("query", "anchor")

    lora = {k: recipe[f"lora_{k}"] for k in ("r", "alpha", "dropout")}
    lora = {"r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"],
            "target_modules": recipe["lora_target_modules"]}
    model = build_model(recipe["model_name_or_path"], recipe["passage_max_length"], lora, recipe["seed"],
                        recipe.get("pooling") or "last_token")
    scale = 1.0 / recipe["temperature"]
    if recipe.get("mini_batch_size"):
        loss = CachedMultipleNegativesRankingLoss(model, scale=scale, mini_batch_size=recipe["mini_batch_size"])
    else:
        loss = MultipleNegativesRankingLoss(model, scale=scale)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(out) / "trainer"),
        per_device_train_batch_size=recipe["per_device_train_batch_size"],
        learning_rate=recipe["learning_rate"],
        warmup_steps=recipe["warmup_steps"],
        weight_decay=recipe["weight_decay"],
        lr_scheduler_type="linear",
        max_steps=recipe["max_steps"],
        seed=recipe["seed"],
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts={"anchor": prompt},
        logging_steps=recipe.get("logging_steps") or 10,
        save_strategy="no",
        report_to="none",
        dataloader_pin_memory=False,
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=rows, loss=loss)
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start

    transformer = model[0]
    merged = transformer.model.merge_and_unload()
    merged.save_pretrained(out)
    transformer.tokenizer.save_pretrained(out)
    if recipe.get("pooling") == "mean":  # E5Embedder reads the pooling from config.json (a plain base: last token)
        config = json.loads((Path(out) / "config.json").read_text())
        (Path(out) / "config.json").write_text(json.dumps({**config, "pooling": "mean"}, indent=2))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    record = {"seconds": seconds, "steps": trainer.state.global_step, "losses": losses,
              "mean_loss": output.training_loss, "loss": type(loss).__name__}
    (Path(out) / "peer_run.json").write_text(json.dumps({"recipe": recipe, **record}, indent=2))
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the scripts/train.py recipe (YAML) to copy")
    parser.add_argument("--out", required=True, help="folder for the merged model")
    parser.add_argument("--max-steps", type=int, help="override the recipe's max_steps")
    parser.add_argument("--pooling", choices=("last_token", "mean"), help="override the recipe's pooling")
    args = parser.parse_args(argv)
    recipe = read_recipe(args.config)
    if args.max_steps:
        recipe["max_steps"] = args.max_steps
    if args.pooling:
        recipe["pooling"] = args.pooling
    record = train_peer(recipe, args.out)
    print(f"sentence-transformers {record['loss']}: {record['steps']} steps in {record['seconds']:.0f} s; "
          f"mean loss {record['mean_loss']:.3f}; logged {', '.join(f'{x:.3f}' for x in record['losses'])}; saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
