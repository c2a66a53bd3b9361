"""What ``scripts/train.py`` prints about a run: the start summary, the before/after retrieval table,
and the saved folder reloaded as a user would (``AutoModel.from_pretrained``) with a few similarities.

Example:
    >>> print(retrieval_table({"eval_ndcg@10": 0.0461}, {"eval_ndcg@10": 0.1666}, metrics=("ndcg@10",)))
      metric         before    after
      ndcg@10        0.0461   0.1666
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from e5mistral.instructions import format_query
from e5mistral.training.log_lines import SHOWN_METRICS

__all__ = ["num_documents", "retrieval_table", "show_similarities", "start_summary"]


def start_summary(trainer, train, dev, lora: bool) -> str:
    """Two lines: the rows per task and the dev rows; the trainable parameters, processes, engine and batch."""
    from e5mistral.training.engines import count_parameters

    args = trainer.args
    trainable = count_parameters(trainer.model)  # whole counts, also of ZeRO-3's partitioned weights
    world = args.world_size
    batch = args.per_device_train_batch_size * world
    # hard negatives a row brings: the first num_negatives (None: all), as the collator takes them;
    # counted on the Arrow column, without turning millions of rows into Python lists
    import numpy as np
    import pyarrow.compute as pc

    negatives = pc.list_value_length(train.with_format("arrow")["negatives"]).to_numpy(zero_copy_only=False)
    if args.num_negatives is not None:
        negatives = np.minimum(negatives, args.num_negatives)
    documents = batch * (1 + (float(negatives.mean()) if len(negatives) else 0.0))
    return (
        f"Training rows: {len(train)} ({dict(Counter(train['task']))}); dev rows: {len(dev) if dev else 0}\n"
        f"Trainable parameters: {trainable:,}{' (LoRA)' if lora else ''}; processes: {world} "
        f"({trainer.engine}); "
        f"global batch: {batch} rows, each query scored against ~{documents:.0f} documents; "
        f"GradCache mini-batch: {gradcache_setting(args)}; temperature {args.temperature}"
    )


def gradcache_setting(args) -> str:
    """``"off"``, ``"8 rows"``, ``"4096 positions"`` (``"4096 tokens"`` when packed) or both: how GradCache cuts its mini-batches."""
    limits = [f"{args.mini_batch_size} rows"] * (args.mini_batch_size is not None)
    unit = "tokens" if args.padding_free else "positions"
    limits += [f"{args.mini_batch_positions} {unit}"] * (args.mini_batch_positions is not None)
    return " / ".join(limits) or "off"


def num_documents(dev) -> int:
    """The distinct documents of dev rows (positives and hard negatives): what each query ranks."""
    return len({*dev["positive"], *(n for negs in dev["negatives"] for n in negs)})


def retrieval_table(before: dict, after: dict, metrics=SHOWN_METRICS) -> str:
    """The held-out metrics (``eval_``-prefixed, as ``E5Trainer.evaluate`` returns them) before and after."""
    lines = [f"  {'metric':12} {'before':>8} {'after':>8}"]
    lines += [f"  {name:12} {before['eval_' + name]:8.4f} {after['eval_' + name]:8.4f}" for name in metrics]
    return "\n".join(lines)


def show_similarities(folder: Path, dev, n: int = 3) -> None:
    """Reload the saved folder as a user would and print query-document cosine similarities."""
    from transformers import AutoModel, AutoTokenizer

    from e5mistral.training.engines import zero3_init_disabled

    tokenizer = AutoTokenizer.from_pretrained(folder)
    with zero3_init_disabled():  # the main process alone: under ZeRO-3, zero.Init would wait for the others
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
