"""Training cases run under one engine in one 2-process launch; tests/test_distributed_engines.py reads the results.

    accelerate launch --config_file configs/accelerate/fsdp.yaml tests/distributed_cases.py --out DIR [--cases a,b]

Each case trains the same tiny model on the same rows for two SGD steps (lr 1, no clipping, fp32)
through ``E5Trainer``, the way ``scripts/train.py`` does, and leaves in ``DIR/<case>/``:

- ``step-0.safetensors`` .. ``step-2.safetensors``: the whole weights before training and after
  each step, gathered from the engine (peft's names in the LoRA case: merged only by the final save);
- ``final/``: the folder ``save_merged_model`` writes;
- ``result.json``: the engine, forwards and collectives counted per process and step (and the
  main process's seconds per step), the probe texts embedded by the model in memory (through the
  engine) and by the reloaded folder, and under DeepSpeed the precision and clipping it was given.

Cases: ``plain`` (no GradCache, several length-sorted chunks per side), ``gradcache`` (mini-batches
of 2 over rows with 0, 1 or 2 hard negatives, so processes cut different numbers of chunks),
``lora_gradcache`` (LoRA through peft, GradCache, activation checkpointing), ``options`` (``gradcache``
with the options beyond the recipe together: bidirectional attention, all four loss directions,
Matryoshka prefixes 32 and 8, hard-negatives-only rows of one task) and ``tiny_bucket``
(``gradcache`` with a ZeRO-3 reduce bucket smaller than one weight: ZeRO-3 only).

For benchmarks (``python -m benchmarks.engines``) the options after ``--cases`` size the run
(model shape, rows, batch, lengths, steps) and ``--timing_only`` leaves only ``result.json``
(engine, counts and seconds per step): no weights saved between steps, no final save or reload.
Without them the run is the tests' one above.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch.distributed as dist
import torch.distributed._functional_collectives as functional_collectives
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import save_file
from transformers import AutoModel, TrainerCallback

from e5mistral import E5Embedder, E5MistralModel
from e5mistral.cli.common import exit_process
from e5mistral.testing import WORDS, make_tiny_model_folder
from e5mistral.tokenization import load_tokenizer
from e5mistral.training.arguments import E5TrainingArguments
from e5mistral.training.engines import zero3_init_disabled
from e5mistral.training.trainer import E5Trainer

PROBES = ["Instruct: Find it\nQuery: river tiger", "about the castle and the garden", "violin", "planet 7 engine"]
COUNTED = (
    "reduce_scatter_single", "reduce_scatter_tensor", "reduce_scatter", "all_gather_single", "all_gather_into_tensor",
    "all_gather", "all_reduce", "broadcast",
)


def rows(n: int = 16, extra_words: int = 0) -> Dataset:
    """Rows with 0, 1 or 2 hard negatives and texts of varied length: processes hold different documents.

    ``extra_words`` (benchmarks) appends up to that many words to every text, fewer to some (lengths
    stay varied); 0 leaves the rows as the tests use them.
    """
    out = []

    def more(i: int, k: int) -> str:
        count = extra_words * (1 + (i + k) % 4) // 4
        return "".join(" " + WORDS[(7 * i + 3 * k + j) % 10] for j in range(count))

    for i in range(n):
        a, b = WORDS[i % 10], WORDS[(3 * i + 1) % 10]
        out.append(
            {
                "query": f"{a} {b} {i}" + " and more words" * (i % 4) + more(i, 0),
                "positive": f"about the {a} and the {b} {i}" + " with details" * (i % 3) + more(i, 1),
                "negatives": [f"about the {b} {i + 7}" + more(i, 2), f"the {a} {i + 3} again" + more(i, 3)][: i % 3],
                "instruction": "Find it",
                "task": "t",
                "language": "en",
            }
        )
    return Dataset.from_list(out)


# The "options" case: the loss options of E5TrainingArguments beyond the recipe, all at once.
OPTIONS = {
    "loss_directions": ["query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"],
    "matryoshka_dims": [32, 8],
    "hard_negatives_only_tasks": ["cls"],
}


@dataclass
class Settings:
    """How big a run is; the defaults are the tests' run (benchmarks set them from the command line)."""

    steps: int = 2
    rows: int = 16
    batch_size: int = 4  # per process
    max_length: int = 32
    extra_words: int = 0
    chunk_positions: int = 24  # several chunks per side in the plain case
    mini_batch_size: int = 2
    learning_rate: float = 1.0
    model_config: dict = field(default_factory=dict)  # overrides of the tiny model's config
    timing_only: bool = False


class Counters:
    """Counts forwards of the model and collectives, per training step (this process).

    The collectives are ``torch.distributed``'s functions named in :data:`COUNTED`, and the
    differentiable gather of the cross-device negatives (``_functional_collectives.all_gather_single``,
    counted as ``all_gather_single``; its backward runs in autograd, out of sight).
    """

    def __init__(self):
        self.active = False
        self.steps: list[Counter] = []
        self.seconds: list[float] = []
        for name in COUNTED:
            self._count(dist, name, name)
        self._count(functional_collectives, "all_gather_single", "all_gather_single")

    def _count(self, module, attribute: str, name: str) -> None:
        original = getattr(module, attribute)

        def counted(*args, **kwargs):
            if self.active:
                self.steps[-1][name] += 1
            return original(*args, **kwargs)

        setattr(module, attribute, counted)

    def forward_hook(self, module, args, kwargs):
        if self.active:
            self.steps[-1]["forward"] += 1


class StepRecorder(TrainerCallback):
    """Counts per step and, after each step, the whole weights (gathered: a collective on every process)."""

    def __init__(self, trainer, counters: Counters, folder: Path, save_weights: bool = True):
        self.trainer, self.counters, self.folder = trainer, counters, folder
        self.save_weights = save_weights

    def on_train_begin(self, args, state, control, **kwargs):
        self.save(0)  # the prepared model before any step: the same start under every engine

    def on_step_begin(self, args, state, control, **kwargs):
        self.counters.steps.append(Counter())
        self.counters.active = True
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.counters.active = False
        self.counters.seconds.append(time.perf_counter() - self.started)  # for benchmarks; no test reads it
        self.save(state.global_step)

    def save(self, step: int) -> None:
        if not self.save_weights:
            return
        state_dict = self.trainer.accelerator.get_state_dict(self.trainer.model_wrapped)
        if self.trainer.accelerator.is_main_process:
            tensors = {k: v.detach().float().cpu().contiguous() for k, v in state_dict.items()}
            save_file(tensors, str(self.folder / f"step-{step}.safetensors"))


def run_case(case: str, out: Path, base: Path, counters: Counters, settings: Settings | None = None) -> None:
    settings = settings or Settings()
    folder = out / case
    args = E5TrainingArguments(
        output_dir=str(folder),
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings.steps,
        optim="sgd",
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        temperature=0.05,
        num_negatives=None,
        query_max_length=settings.max_length,
        passage_max_length=settings.max_length,
        mini_batch_size=None if case == "plain" else settings.mini_batch_size,
        chunk_positions=settings.chunk_positions,  # several chunks per side in the plain case
        activation_checkpointing=case == "lora_gradcache",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
        data_seed=0,
        **(OPTIONS if case == "options" else {}),
    )
    folder.mkdir(parents=True, exist_ok=True)
    with args.main_process_first(desc="writing the base model"):
        if not (base / "config.json").exists():
            make_tiny_model_folder(base, seed=0, **settings.model_config)
    tokenizer = load_tokenizer(str(base))
    model = E5MistralModel.from_pretrained(str(base), bidirectional=case == "options")
    peft_config = None
    if case == "lora_gradcache":
        peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    train_rows = rows(settings.rows, settings.extra_words)
    if case == "options":  # every fourth row a classification row: scored against its own documents only
        train_rows = train_rows.map(lambda row, i: {"task": "cls" if i % 4 == 0 else "t"}, with_indices=True)
    trainer = E5Trainer(model, args, train_dataset=train_rows, processing_class=tokenizer, peft_config=peft_config)
    if case == "tiny_bucket":
        # Smaller than one weight (32 x 32): ZeRO-3 reduces (and, without deferral, overwrites) bucket by bucket.
        trainer.accelerator.state.deepspeed_plugin.hf_ds_config.config["zero_optimization"]["reduce_bucket_size"] = 100
    trainer.add_callback(StepRecorder(trainer, counters, folder, save_weights=not settings.timing_only))
    counters.steps, counters.seconds = [], []
    handle = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    hook = handle.register_forward_pre_hook(counters.forward_hook, with_kwargs=True)
    trainer.train()
    hook.remove()
    if settings.timing_only:
        record_timing(trainer, folder, counters, settings)
        return

    # The trained model in memory, through the engine, as the trainer's evaluation embeds (its private hook).
    with trainer._model_for_evaluation() as engine_model:
        in_memory = E5Embedder(engine_model, tokenizer).encode(PROBES)  # (P, H)
    final = trainer.save_merged_model(str(folder / "final"))
    steps = [dict(c) for c in counters.steps]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, steps)
    if trainer.accelerator.is_main_process:
        with zero3_init_disabled():
            reloaded_model = AutoModel.from_pretrained(str(final))
        reloaded = E5Embedder(reloaded_model, load_tokenizer(str(final))).encode(PROBES)  # (P, H)
        result = {
            "engine": trainer.engine,
            "processes": trainer.accelerator.num_processes,
            "steps_per_process": gathered,
            "step_seconds": counters.seconds,  # this process's wall time per step (the first includes warm-up)
            "in_memory": in_memory.tolist(),
            "reloaded": reloaded.tolist(),
            "final_files": sorted(p.name for p in Path(final).iterdir()),
        }
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None:  # what DeepSpeed was configured with, "auto" values filled from the arguments
            config = plugin.deepspeed_config
            result["deepspeed"] = {key: config.get(key) for key in ("gradient_clipping", "bf16", "fp16")}
        (folder / "result.json").write_text(json.dumps(result, indent=1))
    trainer.accelerator.wait_for_everyone()


def record_timing(trainer, folder: Path, counters: Counters, settings: Settings) -> None:
    """``result.json`` of a benchmark run: the engine, counts per process and step, the main process's seconds."""
    steps = [dict(c) for c in counters.steps]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, steps)
    if trainer.accelerator.is_main_process:
        result = {
            "engine": trainer.engine,
            "processes": trainer.accelerator.num_processes,
            "steps_per_process": gathered,
            "step_seconds": counters.seconds,
            "settings": asdict(settings),
        }
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(trainer.model_wrapped, DistributedDataParallel):
            # DDP all-reduces its gradient buckets from C++ (the counters above never see them): once per step each.
            data = trainer.model_wrapped._get_ddp_logging_data()
            sizes = data.get("rebuilt_bucket_sizes") or data.get("bucket_sizes")
            result["ddp_bucket_sizes"] = [int(x) for x in str(sizes).split(",")] if sizes else None
        (folder / "result.json").write_text(json.dumps(result, indent=1))
    trainer.accelerator.wait_for_everyone()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", default="plain,gradcache,lora_gradcache")
    parser.add_argument("--hang_timeout", type=float, default=400, help="seconds per case before a hang is reported")
    # Benchmarks (benchmarks/engines.py): the size of the run; the defaults are the tests' run.
    defaults = Settings()
    parser.add_argument("--base", default=None, help="the base model's folder, written if missing (default OUT/base)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--rows", type=int, default=defaults.rows)
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size, help="rows per process and step")
    parser.add_argument("--max_length", type=int, default=defaults.max_length)
    parser.add_argument("--extra_words", type=int, default=defaults.extra_words, help="words appended to texts")
    parser.add_argument("--chunk_positions", type=int, default=defaults.chunk_positions)
    parser.add_argument("--mini_batch_size", type=int, default=defaults.mini_batch_size)
    parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--model_config", type=json.loads, default={}, help="JSON overrides of the tiny config")
    parser.add_argument("--timing_only", action="store_true", help="only result.json: no weights, save or reload")
    options = parser.parse_args()
    out = Path(options.out)
    base = Path(options.base) if options.base else out / "base"
    settings = Settings(
        steps=options.steps, rows=options.rows, batch_size=options.batch_size, max_length=options.max_length,
        extra_words=options.extra_words, chunk_positions=options.chunk_positions,
        mini_batch_size=options.mini_batch_size, learning_rate=options.learning_rate,
        model_config=options.model_config, timing_only=options.timing_only,
    )  # fmt: skip
    counters = Counters()
    for case in options.cases.split(","):
        faulthandler.dump_traceback_later(options.hang_timeout, exit=True)  # a hang prints where, then exits
        run_case(case, out, base, counters, settings)
    faulthandler.cancel_dump_traceback_later()
    return 0


if __name__ == "__main__":
    exit_process(main())  # DeepSpeed's groups outlive destroy_process_group; their threads could abort the exit
