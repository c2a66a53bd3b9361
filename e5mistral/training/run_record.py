"""The run's record next to the final weights, and the model card rendered from it.

:class:`RunRecord` is a `TrainerCallback` that :class:`~e5mistral.training.trainer.E5Trainer`
always holds (as sentence-transformers' trainer holds its model-card callback): it keeps the
held-out retrieval metrics of the evaluation before training and of the last one after, and the
trainer's final save (``save_merged_model``) has it write, on the main process:

``training_args.json``   the arguments (``hub_token`` masked)
``trainer_state.json``   steps and the log history
``training_info.json``   base model, dataset, row counts, processes, global batch, held-out before/after,
                         the decontamination (rows dropped per evaluation source) when it was on,
                         the loss options beyond the recipe it used (``loss_options``)
``README.md``            ``model_card.md`` rendered from the three (:func:`e5mistral.hub.render_model_card`)

These are the files :mod:`e5mistral.hub` reads when the folder is pushed. The base model and the
dataset are what the trainer cannot know by itself: pass them to ``RunRecord`` (``scripts/train.py``
does), else the base model is the model's own ``name_or_path`` and the dataset is left out.

Example:
    >>> record = RunRecord(base_model="mistralai/Mistral-7B-v0.1", dataset="my-org/synthetic")
    >>> trainer = E5Trainer(model, args, train_dataset=rows, eval_dataset=dev,  # doctest: +SKIP
    ...                     processing_class=tokenizer, callbacks=[record])
    >>> trainer.evaluate(); trainer.train(); trainer.evaluate()  # doctest: +SKIP
    >>> trainer.save_merged_model()  # doctest: +SKIP  (weights, code, tokenizer, the record and README.md)
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from e5mistral.training.log_lines import SHOWN_METRICS
from e5mistral.training.objectives import options_in_use

__all__ = ["SAMPLE_DATASET_LABEL", "TINY_BASE_MODEL_LABEL", "RunRecord"]

# What the record calls the demo's inputs, which have no Hub id or path of their own.
TINY_BASE_MODEL_LABEL = "random tiny E5MistralModel (e5mistral.testing)"
SAMPLE_DATASET_LABEL = "e5mistral/data/sample_generations.jsonl (bundled sample)"


class RunRecord(TrainerCallback):
    """What a run's final folder records about it (see the module docstring).

    Args:
        base_model: the base model's Hub id or path (``None``: the trained model's ``name_or_path``).
        dataset: the training data as the user named it (``None``: left out of the record).
        dataset_config: its configuration, if any.
        decontamination: what :func:`e5mistral.training.inputs.decontaminate_rows` dropped, if it ran.

    ``before`` and ``after`` are the shown held-out metrics (``ndcg@10``...) of the evaluation at
    step 0 and of the latest one after it; the record has them only when both were measured.
    """

    def __init__(
        self,
        base_model: str | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        decontamination: dict | None = None,
    ):
        self.base_model = base_model
        self.dataset = dataset
        self.dataset_config = dataset_config
        self.decontamination = decontamination
        self.before: dict[str, float] | None = None
        self.after: dict[str, float] | None = None

    @classmethod
    def for_script(cls, script_args, model_args, decontamination: dict | None = None) -> RunRecord:
        """The record of a ``scripts/train.py`` run, from its dataset and model arguments."""
        base_model = model_args.model_name_or_path
        if base_model is None and model_args.tiny_model:
            base_model = TINY_BASE_MODEL_LABEL
        dataset = SAMPLE_DATASET_LABEL if script_args.dataset_name == "sample" else script_args.dataset_name
        return cls(
            base_model=base_model,
            dataset=dataset,
            dataset_config=script_args.dataset_config,
            decontamination=decontamination,
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or not all(f"eval_{name}" in metrics for name in SHOWN_METRICS):
            return  # another prefix (several dev splits) or not a retrieval evaluation
        shown = {name: metrics[f"eval_{name}"] for name in SHOWN_METRICS}
        if state.global_step == 0:
            self.before = shown
        else:
            self.after = shown

    def training_info(self, trainer) -> dict:
        """The content of ``training_info.json`` for ``trainer``'s run."""
        args = trainer.args
        info = {
            "base_model": self.base_model or _name_or_path(trainer),
            "dataset": self.dataset,
            "dataset_config": self.dataset_config,
            "num_train_rows": len(trainer.train_dataset) if trainer.train_dataset is not None else None,
            "hyperparameters": {
                "processes": args.world_size,
                "global batch (rows)": args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
            },
        }
        if self.decontamination is not None:
            info["decontamination"] = self.decontamination
        loss_options = options_in_use(args)  # the options of issue #15 the run used (none: the recipe)
        if loss_options:
            info["loss_options"] = loss_options
        if self.before is not None and self.after is not None:
            dev = trainer.eval_dataset
            info["held_out_evaluation"] = {
                "rows": len(dev) if hasattr(dev, "__len__") and not isinstance(dev, dict) else None,
                "before": self.before,
                "after": self.after,
            }
        return info

    def write(self, folder: str | Path, trainer) -> None:
        """Write the four files into ``folder`` (a saved model folder); call it on the main process."""
        from e5mistral.hub import render_model_card

        folder = Path(folder)
        (folder / "training_args.json").write_text(trainer.args.to_json_string(), encoding="utf-8")
        trainer.state.save_to_json(str(folder / "trainer_state.json"))
        info = json.dumps(self.training_info(trainer), indent=2)
        (folder / "training_info.json").write_text(info + "\n", encoding="utf-8")
        repo_id = trainer.args.hub_model_id or f"your-name/{folder.name}"
        render_model_card(folder, repo_id).save(folder / "README.md")


def _name_or_path(trainer) -> str | None:
    """The trained model's origin: the base of a LoRA model, else the model's ``name_or_path`` ("" -> None)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        return peft_config["default"].base_model_name_or_path or None
    return getattr(model, "name_or_path", None) or None
