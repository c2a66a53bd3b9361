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

The same command is ``python -m e5mistral.cli.train`` (``accelerate launch -m e5mistral.cli.train``)
and the console script ``e5mistral-train``. This module parses the command line and runs the steps;
the steps themselves live in ``e5mistral.training`` (``inputs``: rows, model, resume; ``trainer``;
``run_record``: the record and card the final save writes; ``report``: what is printed).
"""

from __future__ import annotations

import difflib
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from e5mistral.training.engines import has_accelerator

if not has_accelerator():  # DeepSpeed, when installed, otherwise warns on import that it picked the CPU
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from transformers import TrainingArguments, set_seed  # noqa: E402
from trl import ModelConfig, TrlParser  # noqa: E402

from e5mistral.cli.common import exit_process  # noqa: E402
from e5mistral.errors import UserError, run_command  # noqa: E402
from e5mistral.training.arguments import E5ModelConfig, E5ScriptArguments, E5TrainingArguments  # noqa: E402
from e5mistral.training.inputs import (  # noqa: E402
    RunFinished,
    load_datasets,
    load_model_and_tokenizer,
    resolve_resume,
)

__all__ = ["command", "main", "make_parser", "parse_args", "resume_command", "run"]

DATACLASSES = (E5ScriptArguments, E5TrainingArguments, E5ModelConfig)
# TrainingArguments fields shown by --help next to the project's own (--help-all shows every field).
COMMON_FIELDS = {
    "output_dir", "per_device_train_batch_size", "per_device_eval_batch_size", "num_train_epochs", "max_steps",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "seed", "bf16", "gradient_checkpointing",
    "eval_strategy", "eval_steps", "save_strategy", "save_steps", "save_total_limit", "logging_steps",
    "resume_from_checkpoint", "report_to", "push_to_hub", "hub_model_id", "disable_tqdm",
    "model_name_or_path", "model_revision", "dtype", "attn_implementation", "use_peft", "lora_r", "lora_alpha",
    "lora_dropout",
}


def run(script_args: E5ScriptArguments, training_args: E5TrainingArguments, model_args: E5ModelConfig) -> int:
    """Train as the command line asks: rows, resume point, model; evaluate before and after; save; report.

    Raises :class:`UserError` for a mistake the user can fix; returns 130 when Ctrl-C stopped training
    (a checkpoint saved), else 0.

    Example:
        >>> run(*parse_args(["--config", "configs/demo.yaml", "--max_steps", "2"]))  # doctest: +SKIP
        0
    """
    import datasets
    from transformers.utils import logging as hf_logging
    from trl import get_peft_config

    from e5mistral.training.interrupt import StopOnInterrupt
    from e5mistral.training.report import num_documents, retrieval_table, show_similarities, start_summary
    from e5mistral.training.run_record import RunRecord
    from e5mistral.training.trainer import E5Trainer

    set_seed(training_args.seed)
    datasets.disable_progress_bars()  # row checks take milliseconds here; their bars were noise
    loaded: dict = {}  # receives what decontamination dropped, for the run record
    train, dev = load_datasets(script_args, training_args, loaded)  # before the weights: data errors come in seconds
    try:
        resume = resolve_resume(training_args)
    except RunFinished as finished:
        if training_args.process_index == 0:
            print(finished)
        return 0
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    hf_logging.disable_progress_bar()  # one weight-loading bar (the base model's) is enough
    trainer = E5Trainer(
        model,
        training_args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[RunRecord.for_script(script_args, model_args, loaded.get("decontamination"))],
    )
    stop = StopOnInterrupt(trainer.accelerator)
    trainer.add_callback(stop)
    is_main = trainer.accelerator.is_main_process
    if is_main:
        print(start_summary(trainer, train, dev, lora=model_args.use_peft))

    before = trainer.evaluate() if dev is not None else None
    trainer.train(resume_from_checkpoint=resume)
    if stop.stopped_at is not None:
        if is_main:
            checkpoint = Path(training_args.output_dir) / f"checkpoint-{stop.stopped_at}"
            print(
                f"Stopped at step {stop.stopped_at}: saved {checkpoint}. "
                f"Resume with the same command:\n  {resume_command()}",
                file=sys.stderr,
            )
        return 130
    after = trainer.evaluate() if dev is not None else None
    folder = trainer.save_merged_model(training_args.output_dir)  # with the run's record and card

    if is_main:
        if before is not None:
            print(f"\nRetrieval on {len(dev)} held-out rows (each query against all {num_documents(dev)} held-out documents):")
            print(retrieval_table(before, after))
        merged = " (LoRA merged)" if model_args.use_peft else ""
        print(f"\nSaved the model{merged} to {folder}: weights, code, tokenizer, Sentence-Transformers files.")
        if dev is not None:
            show_similarities(folder, dev)
    return 0


def resume_command() -> str:
    """This script's command line as typed (behind the same launcher, when one started it), secrets
    (a ``--hub_token``, URL credentials) redacted: :func:`e5mistral.errors.resume_command`."""
    import os

    from e5mistral.errors import resume_command as command_line

    launcher = "accelerate launch <the same launch options>" if "LOCAL_RANK" in os.environ else "python"
    return command_line(sys.argv[1:], sys.argv[0], launcher=launcher)


def _own_fields() -> set[str]:
    """The options --help shows: the project's own fields and the common TrainingArguments/ModelConfig ones."""
    inherited = {f.name for f in fields(TrainingArguments)} | {f.name for f in fields(ModelConfig)}
    own = {f.name for cls in DATACLASSES for f in fields(cls) if f.name not in inherited}
    return own | COMMON_FIELDS


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


def main(argv: list[str] | None = None) -> int:
    """The command: parse ``argv`` (default: ``sys.argv[1:]``), train; the exit status (2: one ``error:`` line).

    Example:
        >>> main(["--config", "configs/demo.yaml", "--max_steps", "2"])  # doctest: +SKIP
        0
    """
    return run_command(lambda: run(*parse_args(argv)))


def command() -> NoReturn:
    """The ``e5mistral-train`` console script: :func:`main`, then :func:`~e5mistral.cli.common.exit_process`
    (after a multi-process run, an exit that a process group's threads cannot abort)."""
    exit_process(main())


if __name__ == "__main__":
    command()
