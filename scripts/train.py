"""Train an E5-mistral embedding model: InfoNCE with in-batch, hard and cross-device negatives.

The CPU demo (tiny random model, bundled synthetic sample, a few minutes on 2 cores): trains,
evaluates retrieval on held-out rows before and after, saves a Hub-ready folder, reloads it with
``AutoModel.from_pretrained`` and prints similarities::

    python scripts/train.py --config configs/demo.yaml

The same on 2 CPU processes (DDP over gloo, documents gathered across processes)::

    accelerate launch --config_file configs/accelerate/ddp.yaml scripts/train.py --config configs/demo.yaml
    # or, without a config file (the flags the tests use):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config configs/demo.yaml --max_steps 2
    # the same under FSDP2 or DeepSpeed ZeRO-3 (over gloo where there is no GPU; the start line names the engine):
    accelerate launch --config_file configs/accelerate/fsdp.yaml scripts/train.py --config configs/demo.yaml
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml scripts/train.py --config configs/demo.yaml

The paper's recipe (Mistral-7B-v0.1, LoRA r16, batch 2048 through GradCache, ZeRO-3, 32 GPUs)::

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes 32 \\
        scripts/train.py --config configs/e5_mistral_7b.yaml --dataset_name my-org/my-synthetic-data

Any field of the YAML is also a flag, and flags win: ``--max_steps 10 --mini_batch_size 4``.
A mixture of sources: ``--dataset_name "synthetic.jsonl=0.5,my-org/msmarco-triples=0.5"``.
A rerun of the same command resumes from the last checkpoint in ``output_dir`` (it says from which
step); ``--resume_from_checkpoint outputs/e5-demo/checkpoint-40`` picks one, ``false`` starts again
from step 0. Ctrl-C finishes the step in progress, saves a checkpoint and prints the command that
resumes. ``--help`` lists the project's options; ``--help-all`` every TrainingArguments field too.
"""

from __future__ import annotations

import difflib
import json
import shlex
import sys
from collections import Counter
from dataclasses import fields
from pathlib import Path

import torch

from e5mistral.training.engines import has_accelerator

if not has_accelerator():  # DeepSpeed, when installed, otherwise warns on import that it picked the CPU
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from transformers import AutoModel, AutoTokenizer, TrainingArguments, set_seed  # noqa: E402
from trl import ModelConfig, TrlParser

from e5mistral import CheckpointMismatchError, E5MistralModel, ensure_eos, format_query
from e5mistral.errors import UserError, run_command
from e5mistral.training.arguments import E5ModelConfig, E5ScriptArguments, E5TrainingArguments
from e5mistral.training.data import load_training_data

# The trainer (and peft, which transformers.trainer_utils pulls in) are imported in main(), so that
# --help and argument errors answer in about as long as importing torch and transformers takes.

SHOWN_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")
DATACLASSES = (E5ScriptArguments, E5TrainingArguments, E5ModelConfig)
# TrainingArguments fields shown by --help next to the project's own (--help-all shows every field).
COMMON_FIELDS = {
    "output_dir", "per_device_train_batch_size", "per_device_eval_batch_size", "num_train_epochs", "max_steps",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "seed", "bf16", "gradient_checkpointing",
    "eval_strategy", "eval_steps", "save_strategy", "save_steps", "save_total_limit", "logging_steps",
    "resume_from_checkpoint", "report_to", "push_to_hub", "hub_model_id", "disable_tqdm",
    "model_name_or_path", "model_revision", "dtype", "attn_implementation", "use_peft", "lora_r", "lora_alpha",
}


def load_model_and_tokenizer(model_args: E5ModelConfig, training_args: E5TrainingArguments):
    """The base model and its tokenizer: ``model_name_or_path`` when given, else (``tiny_model``) a tiny
    random model written to ``<output_dir>/tiny-base-model`` first."""
    from transformers.utils import logging as hf_logging

    from e5mistral.tokenization import load_tokenizer

    path = model_args.model_name_or_path
    if path is None and model_args.tiny_model:
        from e5mistral.testing import make_tiny_model_folder

        path = str(Path(training_args.output_dir) / "tiny-base-model")
        with training_args.main_process_first(desc="writing the tiny base model"):
            if not (Path(path) / "config.json").exists():
                hf_logging.disable_progress_bar()
                make_tiny_model_folder(path, seed=training_args.seed)
                hf_logging.enable_progress_bar()
    if path is None:
        raise UserError("model_name_or_path is unset: pass --model_name_or_path <Hub id or folder> (or --tiny_model true).")
    tokenizer = ensure_eos(load_tokenizer(path, revision=model_args.model_revision))
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    try:
        model = E5MistralModel.from_pretrained(
            path, revision=model_args.model_revision, dtype=dtype, attn_implementation=model_args.attn_implementation
        )
    except CheckpointMismatchError as error:  # weights that would be dropped or left random: the user's to fix
        raise UserError(str(error).replace("\n", " ")) from None
    return model, tokenizer


def base_model_name(model_args: E5ModelConfig) -> str:
    """What the card calls the base model: the path given, or the tiny random model."""
    if model_args.model_name_or_path is None and model_args.tiny_model:
        return "random tiny E5MistralModel (e5mistral.testing)"
    return model_args.model_name_or_path


def load_datasets(script_args: E5ScriptArguments, training_args: E5TrainingArguments):
    """Training rows and dev rows (a held-out share of the training rows unless eval_dataset_name is set)."""
    if script_args.dataset_name is None:
        raise UserError("dataset_name is unset: pass --dataset_name <file, folder, Hub id, `sample` or a=0.7,b=0.3>.")
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
            if (size if size >= 1 else round(size * len(train))) >= len(train):
                raise UserError(
                    f"eval_split_size={size} leaves no training rows out of {len(train)}; hold out fewer rows."
                )
            split = train.train_test_split(test_size=size if size < 1 else int(size), seed=training_args.seed)
            train, dev = split["train"], split["test"]
    if script_args.max_train_rows is not None:
        train = train.select(range(min(script_args.max_train_rows, len(train))))
    return train, dev


def resolve_resume(training_args: E5TrainingArguments) -> str | None:
    """The checkpoint to resume from: the one named, the last in ``output_dir`` for ``true`` or when unset
    (a rerun of a killed command continues it), ``None`` for ``false`` (start again from step 0)."""
    from transformers.trainer_utils import get_last_checkpoint

    value = training_args.resume_from_checkpoint
    if value is not None and str(value).lower() in ("false", "no", "none", "0"):
        return None
    folder = Path(training_args.output_dir)
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if value is None or str(value).lower() == "true":
        if last is None:
            if value is not None:
                raise UserError(
                    f"resume_from_checkpoint=true but {folder} holds no checkpoint-* folder; drop the flag to start "
                    "from step 0."
                )
            return None
        if value is None and training_args.process_index == 0:
            print(
                f"Resuming from {last} (step {Path(last).name.split('-')[-1]}): {folder} holds the checkpoints of an "
                "earlier run of this command. Pass --resume_from_checkpoint false to start from step 0 (its "
                "checkpoints are then overwritten), or choose another --output_dir."
            )
        return last
    if not Path(value).is_dir():
        raise UserError(f"resume_from_checkpoint={value!r}: no such checkpoint folder; pass a checkpoint-* folder.")
    return value


def show_similarities(folder: Path, dev, n: int = 3) -> None:
    """Reload the saved folder as a user would and print query-document cosine similarities."""
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


def main(script_args: E5ScriptArguments, training_args: E5TrainingArguments, model_args: E5ModelConfig) -> int:
    import datasets
    from transformers.utils import logging as hf_logging
    from trl import get_peft_config

    from e5mistral.training.engines import count_parameters
    from e5mistral.training.trainer import E5Trainer, StopOnInterrupt

    set_seed(training_args.seed)
    datasets.disable_progress_bars()  # row checks take milliseconds here; their bars were noise
    train, dev = load_datasets(script_args, training_args)  # before the weights: data errors come in seconds
    resume = resolve_resume(training_args)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    hf_logging.disable_progress_bar()  # one weight-loading bar (the base model's) is enough
    trainer = E5Trainer(
        model,
        training_args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    stop = StopOnInterrupt(trainer.accelerator)
    trainer.add_callback(stop)
    is_main = trainer.accelerator.is_main_process
    if is_main:
        trainable = count_parameters(trainer.model)  # whole counts, also of ZeRO-3's partitioned weights
        world = training_args.world_size
        print(f"Training rows: {len(train)} ({dict(Counter(train['task']))}); dev rows: {len(dev) if dev else 0}")
        print(
            f"Trainable parameters: {trainable:,}{' (LoRA)' if model_args.use_peft else ''}; processes: {world} "
            f"({trainer.engine}); "
            f"global batch: {training_args.per_device_train_batch_size * world} rows, each query scored against "
            f"~{training_args.per_device_train_batch_size * world * (1 + (training_args.num_negatives or 1))} documents; "
            f"GradCache mini-batch: {training_args.mini_batch_size or 'off'}; temperature {training_args.temperature}"
        )

    before = trainer.evaluate() if dev is not None else None
    trainer.train(resume_from_checkpoint=resume)
    if stop.stopped_at is not None:
        if is_main:
            print(
                f"Stopped at step {stop.stopped_at}: saved {Path(training_args.output_dir) / f'checkpoint-{stop.stopped_at}'}. "
                f"Resume with the same command:\n  {resume_command()}",
                file=sys.stderr,
            )
        return 130
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
    return 0


def resume_command() -> str:
    """This script's command line as typed (behind the same launcher, when one started it), secrets
    (a ``--hub_token``, URL credentials) redacted as everywhere else."""
    import os

    from e5mistral.synthetic.llm import redact

    launcher = "accelerate launch <the same launch options> " if "LOCAL_RANK" in os.environ else "python "
    return launcher + " ".join(shlex.quote(redact(a)) for a in sys.argv)


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
        "base_model": base_model_name(model_args),
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


def _own_fields() -> set[str]:
    """The options --help shows: the project's own fields and the common TrainingArguments/ModelConfig ones."""
    inherited = {f.name for f in fields(TrainingArguments)} | {f.name for f in fields(ModelConfig)}
    own = {f.name for cls in DATACLASSES for f in fields(cls) if f.name not in inherited}
    return own | {f.name for cls in (E5ModelConfig,) for f in fields(cls) if f.name in ("use_peft", "lora_dropout")} | COMMON_FIELDS


def make_parser(show_all: bool = False) -> TrlParser:
    """The command line: every field of the three dataclasses, the project's options listed first."""
    import argparse

    parser = TrlParser(DATACLASSES, usage="train.py --config RECIPE.yaml [--FIELD VALUE ...]   (--help-all: every option)")
    if not show_all:
        shown = _own_fields()
        for action in parser._actions:
            if action.dest not in shown and action.dest not in ("help", "config") and action.option_strings:
                action.help = argparse.SUPPRESS
    return parser


def parse_args(argv: list[str] | None = None):
    """Parse the command line and ``--config`` YAML; a mistyped field is one ``error:`` line naming close matches."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_all = "--help-all" in argv
    argv = ["--help" if a == "--help-all" else a for a in argv]
    parser = make_parser(show_all)
    known = {a.dest for a in parser._actions} - {"help"}
    if "--config" in argv[:-1]:
        _check_config_fields(argv[argv.index("--config") + 1], known)
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as error:  # a field's __post_init__ check, or an unused argument
        raise UserError(str(error)) from None


def _check_config_fields(path: str, known: set[str]) -> None:
    import yaml

    if not Path(path).is_file():
        raise UserError(f"--config {path}: no such file; the recipes are under configs/ (e.g. configs/demo.yaml).")
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"--config {path} is not valid YAML: {str(error).splitlines()[0]}; fix the file.") from None
    if not isinstance(config, dict):
        raise UserError(f"--config {path} must map field names to values, got {type(config).__name__}.")
    unknown = [name for name in config if name not in known and name != "env"]
    if unknown:
        hints = [
            f"{name!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, known, 1)) else "")
            for name in unknown
        ]
        raise UserError(
            f"--config {path} sets unknown fields {', '.join(hints)}; fix their names (`scripts/train.py --help-all` "
            "lists every field)."
        )


if __name__ == "__main__":
    sys.exit(run_command(lambda: main(*parse_args())))
