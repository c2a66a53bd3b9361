"""Configuration of a training run: what the E5 recipe adds to `TrainingArguments`, and the script's own.

Every field carries its help text, so these dataclasses are both the command line of
``scripts/train.py`` (through ``TrlParser``) and its documentation. YAML recipes under
``configs/`` set the same names.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments
from trl import ModelConfig

from e5mistral.training.engines import require_engine_packages, select_cpu_backend

__all__ = ["LORA_TARGET_MODULES", "E5ModelConfig", "E5ScriptArguments", "E5TrainingArguments"]

logger = logging.getLogger(__name__)

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class E5TrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the contrastive objective, batch construction and final export.

    ``hub_token`` is never written: pickling (``training_args.bin`` in checkpoints) drops it, and
    ``to_json_string`` masks it.

    Example:
        >>> args = E5TrainingArguments(output_dir="out", per_device_train_batch_size=64, mini_batch_size=8)
        >>> args.temperature, args.gather_across_devices
        (0.02, True)
    """

    temperature: float = field(
        default=0.02,
        metadata={"help": "InfoNCE temperature tau: logits are cosine similarity / tau. The recipe uses 0.02."},
    )
    query_max_length: int = field(
        default=512,
        metadata={"help": "Truncation length of queries in tokens (instruction and EOS included)."},
    )
    passage_max_length: int = field(
        default=512,
        metadata={"help": "Truncation length of documents (positives and hard negatives) in tokens, EOS included."},
    )
    num_negatives: int | None = field(
        default=1,
        metadata={
            "help": "Hard negatives used per row (the first ones of `negatives`); the recipe uses 1. "
            "None uses all of them, 0 none (in-batch negatives only)."
        },
    )
    mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "GradCache: texts embedded per forward pass, so that `per_device_train_batch_size` rows "
            "share one softmax at the memory cost of this many. Unset: off (one graph for the batch)."
        },
    )
    mini_batch_positions: int | None = field(
        default=None,
        metadata={"help": "GradCache by a token budget: padded positions per forward (tokens, with padding_free)."},
    )
    chunk_positions: int = field(
        default=2048,
        metadata={
            "help": "Without GradCache, length-sorted chunks of at most this many padded positions (one "
            "forward's gradients, less padding); 0: one forward (queries and documents together)."
        },
    )
    padding_free: bool = field(
        default=False,
        metadata={"help": "Pack each forward's texts in one row, no padding (same loss and gradients)."},
    )
    gather_across_devices: bool = field(
        default=True,
        metadata={
            "help": "With several processes, score each query against the documents of all processes "
            "(gathered with gradients), as one big batch would."
        },
    )
    no_duplicates_in_batch: bool = field(
        default=False,
        metadata={
            "help": "Build batches in which no text (query, positive, negative) appears twice, across all "
            "processes, so no row's positive is another row's negative."
        },
    )
    same_task_batches: bool = field(
        default=False,
        metadata={"help": "Draw each (global) batch from rows of a single `task`, so in-batch negatives are hard."},
    )
    loss_directions: list[str] = field(
        default_factory=lambda: ["query_to_doc"],
        metadata={
            "help": "InfoNCE terms: query_to_doc (the recipe, required) plus any of query_to_query, doc_to_query, "
            "doc_to_doc (GTE / Qwen3-Embedding's improved contrastive loss; duplicates masked in each).",
        },
    )
    loss_partition: str = field(
        default="joint",
        metadata={
            "help": "joint (one softmax over all loss_directions) or per_direction (log-partitions averaged; "
            "query_to_doc and doc_to_query only).",
            "choices": ["joint", "per_direction"],
        },
    )
    matryoshka_dims: list[int] | None = field(
        default=None,
        metadata={
            "help": "Matryoshka: train these embedding prefixes (re-normalised), losses summed, e.g. 4096 1024 256 "
            "(include the full size). Unset: the recipe."
        },
    )
    matryoshka_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weights of the matryoshka_dims losses, one per dim (default 1 each)."},
    )
    truncate_dim: int | None = field(
        default=None,
        metadata={
            "help": "Embedding size the saved folder is loaded with (SentenceTransformer, E5Embedder); "
            "one of matryoshka_dims."
        },
    )
    hard_negatives_only_tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Rows of these tasks (e.g. classification clustering) are scored against their own positive and "
            "hard negatives only, no in-batch negatives (SFR-Embedding)."
        },
    )
    keep_adapter: bool = field(
        default=False,
        metadata={"help": "With LoRA, also keep the adapter alone in `<output_dir>/adapter` next to the merged model."},
    )

    def __getstate__(self) -> dict:
        # `Trainer` pickles the arguments into every checkpoint and saved folder (training_args.bin);
        # the Hub token must not travel with them (`to_json_string` already masks it).
        state = self.__dict__.copy()
        state["hub_token"] = None
        return state

    @property
    def uses_gradcache(self) -> bool:
        """GradCache is on: ``mini_batch_size`` or ``mini_batch_positions`` is set."""
        return self.mini_batch_size is not None or self.mini_batch_positions is not None

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0; the recipe uses 0.02.")
        for name in ("query_max_length", "passage_max_length"):
            if getattr(self, name) < 2:
                raise ValueError(
                    f"{name}={getattr(self, name)} leaves no room for a token and EOS; use >= 2 (recipe: 512)."
                )
        if self.num_negatives is not None and self.num_negatives < 0:
            raise ValueError(f"num_negatives={self.num_negatives} must be >= 0, or None for all hard negatives.")
        if self.chunk_positions < 0:
            raise ValueError(f"chunk_positions={self.chunk_positions} must be >= 0 (0: one forward for the batch).")
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise ValueError(
                f"mini_batch_size={self.mini_batch_size} must be >= 1; leave it unset to turn GradCache off."
            )
        if self.mini_batch_positions is not None and self.mini_batch_positions < 2:
            raise ValueError(
                f"mini_batch_positions={self.mini_batch_positions} leaves no room for a text; use a budget of "
                "padded positions such as 4096, or leave it unset."
            )
        check_loss_options(self)
        # A multi-process launch on a machine without GPUs trains on CPU over gloo (under the engine the
        # accelerate config asks for); see e5mistral.training.engines.
        require_engine_packages(self)
        select_cpu_backend(self)
        super().__post_init__()
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.world_size == 1:
            raise RuntimeError(
                f"launched as {launched} processes (WORLD_SIZE={launched}) but each runs alone (world_size=1), so no "
                "gradient is shared: launch with an accelerate config (`accelerate launch --config_file "
                "configs/accelerate/ddp.yaml ...`, or fsdp.yaml / deepspeed_zero3.yaml)."
            )
        rows_only = self.mini_batch_positions is None and self.mini_batch_size is not None
        if rows_only and self.mini_batch_size >= self.per_device_train_batch_size:
            logger.warning(
                f"mini_batch_size={self.mini_batch_size} >= per_device_train_batch_size="
                f"{self.per_device_train_batch_size}: GradCache saves no memory here and only adds a second forward."
            )
        if self.gradient_accumulation_steps > 1:
            logger.warning(
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} does not add in-batch negatives: "
                "each micro-batch has its own softmax. For a large contrastive batch, raise "
                "per_device_train_batch_size and set mini_batch_size (GradCache) instead."
            )


def check_loss_options(args: E5TrainingArguments) -> None:
    """One clear ``ValueError`` line for a wrong loss option (``e5mistral.training.objectives``)."""
    from e5mistral.training.objectives import DIRECTIONS, PARTITIONS

    directions = list(args.loss_directions or [])
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or "query_to_doc" not in directions or len(set(directions)) != len(directions):
        raise ValueError(
            f"loss_directions={directions}: list each of {', '.join(DIRECTIONS)} at most once, query_to_doc "
            "included (it holds the positive); the recipe is [query_to_doc]."
        )
    if args.loss_partition not in PARTITIONS:
        raise ValueError(f"loss_partition={args.loss_partition!r} must be joint or per_direction.")
    same_side = sorted(set(directions) & {"query_to_query", "doc_to_doc"})
    if args.loss_partition == "per_direction" and same_side:
        raise ValueError(
            f"loss_partition=per_direction with loss_directions {same_side}: those terms hold no positive, so a "
            "softmax of their own is ill-defined; use loss_partition=joint or drop them."
        )
    dims = args.matryoshka_dims
    if dims is not None:
        bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or d < 1]
        if not dims or bad or len(set(dims)) != len(dims):
            raise ValueError(
                f"matryoshka_dims={dims} must be distinct positive integers, e.g. [4096, 1024, 256]; "
                "unset for the recipe."
            )
    weights = args.matryoshka_weights
    if weights is not None:
        if dims is None or len(weights) != len(dims):
            raise ValueError(
                f"matryoshka_weights={weights} needs one weight per matryoshka_dims entry ({dims}); "
                "set both or neither."
            )
        if any(not (w >= 0) or w == float("inf") for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"matryoshka_weights={weights} must be finite, >= 0 and not all 0.")
    if args.truncate_dim is not None and (isinstance(args.truncate_dim, bool) or args.truncate_dim < 1):
        raise ValueError(f"truncate_dim={args.truncate_dim} must be a positive integer, or unset for full embeddings.")
    tasks = args.hard_negatives_only_tasks
    if tasks is not None and (not tasks or not all(isinstance(t, str) and t.strip() for t in tasks)):
        raise ValueError(
            f"hard_negatives_only_tasks={tasks} must be non-empty task names (the rows' `task` values), e.g. "
            "[classification, clustering]; unset for the recipe."
        )


@dataclass
class E5ModelConfig(ModelConfig):
    """TRL's `ModelConfig` with the recipe's LoRA defaults: r 16, alpha 32, dropout 0.1, all linear projections."""

    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters (the recipe) instead of all weights."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (recipe: 0.1)."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: list(LORA_TARGET_MODULES),
        metadata={"help": "Modules that get LoRA adapters (recipe: q,k,v,o,gate,up,down projections)."},
    )
    lora_task_type: str = field(
        default="FEATURE_EXTRACTION", metadata={"help": "peft task type; an embedding model extracts features."}
    )
    pooling: str | None = field(
        default=None,
        metadata={
            "help": "last_token (the recipe: the state at the appended EOS) or mean (over attended tokens); "
            "unset keeps the checkpoint's, last_token for a plain base model.",
            "choices": ["last_token", "mean"],
        },
    )
    bidirectional: bool | None = field(
        default=None,
        metadata={
            "help": "No causal mask (llm2vec / NV-Embed; eager or sdpa attention). Unset: the checkpoint's "
            "(causal for a plain base model, as in the recipe)."
        },
    )
    tiny_model: bool = field(
        default=False,
        metadata={
            "help": "Train a tiny random model built in-process (e5mistral.testing) instead of "
            "`model_name_or_path`: the CPU demo, no download."
        },
    )


@dataclass
class E5ScriptArguments:
    """Where the training rows come from, and what the script prints at the end."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Training rows: a Hub dataset id, a local .json/.jsonl/.parquet file or a folder of them, "
            "`sample` for the bundled synthetic sample, or a mixture `a=0.7,b=0.3` (comma-separated sources "
            "with sampling ratios). Schema: query, positive, negatives (or negative), instruction, task, language."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration name of a Hub dataset (e.g. a task kind: short_long)."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Rows for evaluation (same forms as dataset_name). Unset: hold out `eval_split_size` of the "
            "training rows."
        },
    )
    eval_dataset_split: str = field(
        default="validation", metadata={"help": "Split of eval_dataset_name to evaluate on (e.g. test)."}
    )
    eval_dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration name of the eval dataset, if it has several."}
    )
    eval_split_size: float = field(
        default=0.0,
        metadata={
            "help": "Held-out share (< 1) or number of rows (>= 1) of the training rows used as the dev split "
            "for retrieval metrics. 0: no evaluation unless eval_dataset_name is set."
        },
    )
    max_train_rows: int | None = field(default=None, metadata={"help": "Keep at most this many training rows (debug)."})
    decontaminate_against: list[str] | None = field(
        default=None,
        metadata={
            "help": "Evaluation data (BEIR folders, .jsonl/.json/.parquet files or folders of them): training "
            "rows sharing a word n-gram with it are dropped and counted (e5mistral.decontamination)."
        },
    )
    decontamination_ngram: int = field(
        default=13,
        metadata={"help": "Word n-gram size of decontamination (13, as GPT-3's contamination study)."},
    )
    decontamination_min_share: float = field(
        default=0.0,
        metadata={
            "help": "Share of a text's n-grams that must be found in the evaluation data to drop its row; "
            "0: any shared n-gram."
        },
    )

    def __post_init__(self):
        if self.eval_split_size < 0:
            raise ValueError(f"eval_split_size={self.eval_split_size} must be >= 0 (a share < 1 or a row count).")
        if self.decontamination_ngram < 1:
            raise ValueError(f"decontamination_ngram={self.decontamination_ngram} must be >= 1 (13 is the usual).")
        if not 0.0 <= self.decontamination_min_share <= 1.0:
            raise ValueError(
                f"decontamination_min_share={self.decontamination_min_share} must be in [0, 1] (0: any shared n-gram)."
            )
