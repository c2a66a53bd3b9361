"""What a training run starts from: its rows, its base model and tokenizer, and the checkpoint it resumes.

Each step fails fast with one :class:`~e5mistral.errors.UserError` line the user can act on; the
rows are loaded (and checked) before the weights, so a data mistake answers in seconds.

Example:
    >>> training_args = E5TrainingArguments("outputs/try", report_to="none")
    >>> train, dev = load_datasets(E5ScriptArguments(dataset_name="sample", eval_split_size=60), training_args)
    >>> len(dev)
    60
    >>> resolve_resume(training_args) is None  # no checkpoint-* folder in outputs/try yet
    True
    >>> model, tokenizer = load_model_and_tokenizer(E5ModelConfig(tiny_model=True), training_args)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from e5mistral.errors import UserError
from e5mistral.modeling_e5mistral import CheckpointMismatchError, E5MistralModel
from e5mistral.tokenization import ensure_eos
from e5mistral.training.arguments import E5ModelConfig, E5ScriptArguments, E5TrainingArguments
from e5mistral.training.data import load_training_data

__all__ = ["RunFinished", "decontaminate_rows", "load_datasets", "load_model_and_tokenizer", "resolve_resume"]


class RunFinished(Exception):
    """The checkpoint to resume already reached ``max_steps`` and ``output_dir`` holds the run's final
    model: nothing to train (``transformers.Trainer`` would train one step past ``max_steps``). The
    message says so and how to train further."""


def decontaminate_rows(script_args: E5ScriptArguments, rows, *, verbose: bool = True):
    """``rows`` without those overlapping ``script_args.decontaminate_against`` (unset: ``rows`` as
    they are), and the record of what was dropped (``None`` when off); prints the report line.

    Example:
        >>> args = E5ScriptArguments(dataset_name="rows.jsonl", decontaminate_against=["data/scifact"])
        >>> rows, record = decontaminate_rows(args, load_training_data("rows.jsonl"))  # doctest: +SKIP
        decontamination: dropped 3 of 1200 rows (3 sharing an n-gram with data/scifact)
    """
    if not script_args.decontaminate_against:
        return rows, None
    from e5mistral.decontamination import NgramIndex, decontaminate

    index = NgramIndex.build(
        script_args.decontaminate_against,
        n=script_args.decontamination_ngram,
        min_share=script_args.decontamination_min_share,
    )
    kept, report = decontaminate(rows, index, ["query", "positive", "negatives"])
    if verbose:
        print(report.line())
    record = {
        **report.to_dict(),
        "against": list(script_args.decontaminate_against),
        "ngram": index.n,
        "min_words": index.min_words,
        "min_share": index.min_share,
    }
    return kept, record


def load_datasets(script_args: E5ScriptArguments, training_args: E5TrainingArguments, record: dict | None = None):
    """Training rows and dev rows (a held-out share of the training rows unless eval_dataset_name is set).

    With ``decontaminate_against`` set, training rows overlapping that evaluation data are dropped
    first (:func:`decontaminate_rows`, before any dev rows are held out); ``record``, a dict, then
    receives ``record["decontamination"]`` for the run record.
    """
    if script_args.dataset_name is None:
        raise UserError("dataset_name is unset: pass --dataset_name <file, folder, Hub id, `sample` or a=0.7,b=0.3>.")
    with training_args.main_process_first(desc="loading the dataset"):
        train = load_training_data(
            script_args.dataset_name,
            script_args.dataset_train_split,
            script_args.dataset_config,
            seed=training_args.seed,
        )
        train, decontaminated = decontaminate_rows(script_args, train, verbose=training_args.process_index == 0)
        if decontaminated is not None:
            if len(train) == 0:
                raise UserError(
                    f"decontamination dropped all {decontaminated['rows']} training rows "
                    f"({', '.join(script_args.decontaminate_against)}); check decontaminate_against."
                )
            if record is not None:
                record["decontamination"] = decontaminated
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
    overrides = {"pooling": model_args.pooling} if model_args.pooling else {}
    if model_args.bidirectional is not None:
        overrides["bidirectional"] = model_args.bidirectional
    if overrides.get("bidirectional") and model_args.attn_implementation not in (None, "eager", "sdpa"):
        raise UserError(
            f"bidirectional=true needs attn_implementation eager or sdpa, not {model_args.attn_implementation!r} "
            "(only those are checked to drop the causal mask); pass --attn_implementation sdpa."
        )
    try:
        model = E5MistralModel.from_pretrained(
            path, revision=model_args.model_revision, dtype=dtype, attn_implementation=model_args.attn_implementation,
            **overrides,
        )
    except CheckpointMismatchError as error:  # weights that would be dropped or left random: the user's to fix
        raise UserError(str(error).replace("\n", " ")) from None
    return model, tokenizer


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
        refuse_finished(last, training_args)
        if value is None and training_args.process_index == 0:
            print(
                f"Resuming from {last} (step {Path(last).name.split('-')[-1]}): {folder} holds the checkpoints of an "
                "earlier run of this command. Pass --resume_from_checkpoint false to start from step 0 (its "
                "checkpoints are then overwritten), or choose another --output_dir."
            )
        return last
    if not Path(value).is_dir():
        raise UserError(f"resume_from_checkpoint={value!r}: no such checkpoint folder; pass a checkpoint-* folder.")
    refuse_finished(value, training_args)
    return value


def refuse_finished(checkpoint: str, training_args: E5TrainingArguments) -> None:
    """Raise when ``checkpoint`` is at or past ``max_steps``: :class:`RunFinished` when ``output_dir`` holds
    the final model (``training_info.json``, written by the final save), else a :class:`UserError`.

    ``Trainer`` resuming there would still train one step (lr 0 at the end of a linear schedule, a full
    step under a constant one) before it checks ``max_steps``.
    """
    import json

    state = Path(checkpoint) / "trainer_state.json"
    if training_args.max_steps <= 0 or not state.is_file():
        return
    step = int(json.loads(state.read_text(encoding="utf-8")).get("global_step", 0))
    if step < training_args.max_steps:
        return
    folder = Path(training_args.output_dir)
    where = f"{Path(checkpoint).name} is at step {step} of max_steps {training_args.max_steps}"
    further = "raise --max_steps to train further, or pass --resume_from_checkpoint false to train again from step 0"
    if (folder / "training_info.json").is_file():
        raise RunFinished(f"Nothing to train: {where}, and {folder} holds the finished run's model; {further}.")
    raise UserError(f"{where}, but {folder} has no final model (its final save was cut short); {further}.")
