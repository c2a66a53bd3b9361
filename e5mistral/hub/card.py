"""The model card of a trained model, rendered from what the run left on disk.

The model card is ``model_card.md`` (a Jinja template in ``e5mistral/templates/``, linked from the
repository root) rendered with
``huggingface_hub.ModelCard.from_template`` from what the run left on disk -- nothing is typed in
by hand, and a field without data is left out of the card:

===============================  ===================================================================
source (in the model folder)     what the card gets
===============================  ===================================================================
``config.json``                  architecture, pooling, normalisation, attention direction, dtype
``*.safetensors`` headers        number of parameters (read from the headers, weights not loaded)
``sentence_bert_config.json``    max sequence length
``config_sentence_transformers`` the named prompts
``adapter/adapter_config.json``  LoRA r / alpha / dropout / target modules, base model
``training_args.json``           hyper-parameters (``TrainingArguments.to_json_string()``)
``trainer_state.json``           optimizer steps, epochs, final training loss
``training_info.json``           optional: ``base_model``, ``dataset``, ``num_train_rows``,
                                 ``held_out_evaluation`` (the run's dev retrieval, before/after)
results JSON                     evaluation (``scripts/evaluate.py --output``), also as ``model-index``
===============================  ===================================================================

Example:

```python
>>> sorted(collect_model_info("out/my-e5"))
['architecture', 'base_model', 'dataset_ids', 'held_out', 'hyperparameters', 'lora', 'prompts', 'training_data']
```
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MODEL_CARD_TEMPLATE", "collect_model_info", "render_model_card"]

# Shipped inside the package (the repository root's model_card.md links to it), so installs have it.
DEFAULT_MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "model_card.md"

# TrainingArguments / E5TrainingArguments field -> card label
HYPERPARAMETERS = {
    "learning_rate": "learning rate",
    "lr_scheduler_type": "learning-rate schedule",
    "warmup_steps": "warm-up steps",
    "warmup_ratio": "warm-up ratio",
    "weight_decay": "weight decay",
    "per_device_train_batch_size": "batch size per device",
    "gradient_accumulation_steps": "gradient accumulation steps",
    "num_train_epochs": "epochs",
    "max_steps": "max steps",
    "temperature": "InfoNCE temperature",
    "query_max_length": "query max length",
    "passage_max_length": "passage max length",
    "num_negatives": "hard negatives per query",
    "mini_batch_size": "GradCache mini-batch size",
    "mini_batch_positions": "GradCache mini-batch token budget (padded positions)",
    "gather_across_devices": "negatives gathered across devices",
    "no_duplicates_in_batch": "no duplicate texts in a batch",
    "same_task_batches": "same-task batches",
    "loss_directions": "InfoNCE directions",
    "loss_partition": "InfoNCE partition",
    "matryoshka_dims": "Matryoshka dimensions",
    "matryoshka_weights": "Matryoshka weights",
    "hard_negatives_only_tasks": "tasks scored on their hard negatives only",
    "bf16": "bf16",
    "fp16": "fp16",
    "gradient_checkpointing": "gradient checkpointing",
    "optim": "optimizer",
    "seed": "seed",
}
LORA_FIELDS = {"r": "rank (r)", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target modules"}
TRAINING_DATA_FIELDS = {"dataset": "dataset", "dataset_config": "configuration", "num_train_rows": "training rows"}
BEIR_CARD_METRICS = ("ndcg@10", "mrr@10", "recall@100")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or remove the file.") from None


def _optional_json(path: Path) -> Any:
    return _read_json(path) if path.is_file() else None


def _num_parameters(model_dir: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict and is not iterable)
                shape = f.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def _plain(value: Any) -> Any:
    """Lists/sets as sorted comma text for the card's tables."""
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in sorted(value, key=str))
    return value


def collect_model_info(
    model_dir: str | Path,
    training_args: str | Path | Mapping | None = None,
    trainer_state: str | Path | Mapping | None = None,
    training_info: str | Path | Mapping | None = None,
) -> dict[str, Any]:
    """Gather the card's facts from a model folder (see the module table); absent facts are absent.

    The three optional arguments override the files of the same name in `model_dir`.

    Returns:
        {"architecture": {...}, "prompts": {...}, "base_model": str | None, "lora": {...},
        "hyperparameters": {...}, "training_data": {...}}, each sub-dict holding only known keys.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist; --model must be a saved model folder (e5mistral.save_model_folder)."
        )

    def load(value, name):
        if isinstance(value, Mapping):
            return dict(value)
        return _optional_json(Path(value) if value is not None else model_dir / name) or {}

    config = _read_json(config_path)
    st_config = _optional_json(model_dir / "sentence_bert_config.json") or {}
    st_files_config = _optional_json(model_dir / "config_sentence_transformers.json") or {}
    st_prompts = st_files_config.get("prompts") or {}
    adapter = _optional_json(model_dir / "adapter" / "adapter_config.json") or {}
    args = load(training_args, "training_args.json")
    state = load(trainer_state, "trainer_state.json")
    info = load(training_info, "training_info.json")

    architecture = {
        "model_type": config.get("model_type"),
        "hidden_size": config.get("hidden_size"),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "pooling": config.get("pooling"),
        "normalize": config.get("normalize"),
        "bidirectional": bool(config.get("bidirectional")),
        "max_seq_length": st_config.get("max_seq_length"),
        "truncate_dim": st_files_config.get("truncate_dim"),
        "num_parameters": _num_parameters(model_dir),
        "weights_dtype": config.get("dtype") or config.get("torch_dtype"),
    }
    if args.get("loss_directions") in (["query_to_doc"], ("query_to_doc",)):  # the recipe's: not an option used
        args = {k: v for k, v in args.items() if k not in ("loss_directions", "loss_partition")}
    hyperparameters = {
        label: ", ".join(map(str, args[key])) if key.startswith("matryoshka") else _plain(args[key])
        for key, label in HYPERPARAMETERS.items()
        if args.get(key) not in (None, "", [])
    }
    if hyperparameters.get("max steps") is not None and hyperparameters["max steps"] <= 0:
        del hyperparameters["max steps"]  # -1 means "use epochs"
    if state.get("global_step"):
        hyperparameters["optimizer steps"] = state["global_step"]
    losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
    if losses:
        hyperparameters["final training loss (last logged)"] = round(float(losses[-1]), 4)
    for key, value in (info.get("hyperparameters") or {}).items():
        hyperparameters[key] = _plain(value)

    lora = {label: _plain(adapter[key]) for key, label in LORA_FIELDS.items() if adapter.get(key) is not None}
    training_data = {label: info[key] for key, label in TRAINING_DATA_FIELDS.items() if info.get(key) is not None}
    decontamination = info.get("decontamination")
    if decontamination:  # the run dropped rows overlapping evaluation data (training_info.json)
        against = ", ".join(f"`{source}`" for source in decontamination.get("against", []))
        training_data["decontaminated against"] = f"{against} ({decontamination.get('ngram')}-word n-grams)"
        training_data["rows dropped by decontamination"] = (
            f"{decontamination['dropped']} of {decontamination['rows']}"
        )
    return {
        "architecture": {k: v for k, v in architecture.items() if v is not None},
        "prompts": st_prompts,
        "base_model": info.get("base_model") or adapter.get("base_model_name_or_path"),
        "lora": lora,
        "hyperparameters": hyperparameters,
        "training_data": training_data,
        "held_out": info.get("held_out_evaluation") or {},
        "dataset_ids": [info["dataset"]]
        if isinstance(info.get("dataset"), str)
        and _HUB_ID.match(info["dataset"])
        and not Path(info["dataset"]).exists()
        else [],
    }


def _eval_results(results: Mapping[str, Any], model_name: str) -> list:
    """`model-index` entries from a results JSON written by scripts/evaluate.py."""
    from huggingface_hub import EvalResult

    entries = []
    for name, r in (results.get("beir") or {}).items():
        for metric, value in r["metrics"].items():
            entries.append(
                EvalResult(
                    task_type="Retrieval",
                    dataset_type=name,
                    dataset_name=f"{name} (BEIR format)",
                    dataset_split=r.get("split"),
                    metric_type=metric.replace("@", "_at_"),
                    metric_value=float(value),
                    metric_name=metric,
                )
            )
    for name, r in (results.get("mteb") or {}).items():
        dataset = r.get("dataset") or {}
        for split, subsets in (r.get("scores") or {}).items():
            for subset in subsets:
                value = subset.get(r["main_score_name"])
                if value is None:
                    continue
                entries.append(
                    EvalResult(
                        task_type=r["type"],
                        dataset_type=dataset.get("path") or name,
                        dataset_name=f"MTEB {name}",
                        dataset_config=subset.get("hf_subset"),
                        dataset_split=split,
                        dataset_revision=dataset.get("revision"),
                        metric_type=r["main_score_name"],
                        metric_value=float(value),
                    )
                )
    return entries


def render_model_card(
    model_dir: str | Path,
    repo_id: str,
    results: str | Path | Mapping | None = None,
    *,
    template_path: str | Path | None = None,
    license: str | None = None,
    **info_sources,
):
    """Render ``model_card.md`` for `model_dir` as a `huggingface_hub.ModelCard`.

    Args:
        model_dir: the saved model folder.
        repo_id: the Hub id the card's usage snippets load from.
        results: a results JSON path or dict from ``scripts/evaluate.py``; becomes ``model-index``.
        template_path: defaults to the packaged ``e5mistral/templates/model_card.md``.
        license: a Hub license id; left out of the card when not given.
        info_sources: ``training_args=``, ``trainer_state=``, ``training_info=`` for
            :func:`collect_model_info`.

    Example:

    ```python
    >>> card = render_model_card("out/my-e5", "me/my-e5", results="results.json")
    >>> card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["type"]
    'ndcg_at_1'
    ```
    """
    from huggingface_hub import ModelCard, ModelCardData

    info = collect_model_info(model_dir, **info_sources)
    if isinstance(results, str | Path):
        results = _read_json(Path(results))
    results = results or {}
    model_name = repo_id.split("/")[-1]
    eval_results = _eval_results(results, model_name) or None
    base_model = info["base_model"]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model if base_model and _HUB_ID.match(base_model) and not Path(base_model).exists() else None,
        datasets=info["dataset_ids"] or None,
        license=license,
        library_name="sentence-transformers",
        pipeline_tag="feature-extraction",
        tags=["sentence-transformers", "feature-extraction", "sentence-similarity", "text-embeddings", "e5mistral"],
        eval_results=eval_results,
    )
    template = Path(template_path) if template_path else DEFAULT_MODEL_CARD_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(
            f"model card template {template} not found; pass template_path= (e5mistral/templates/model_card.md)."
        )
    beir = results.get("beir") or {}
    beir_metrics = [m for m in BEIR_CARD_METRICS if any(m in r["metrics"] for r in beir.values())]
    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        repo_id=repo_id,
        base_model=base_model,
        architecture=info["architecture"],
        prompts=info["prompts"],
        lora=info["lora"],
        hyperparameters=info["hyperparameters"],
        training_data=info["training_data"],
        held_out=info["held_out"],
        beir_results=beir,
        beir_metrics=beir_metrics,
        mteb_results=results.get("mteb") or {},
    )
    # the template's optional sections leave runs of blank lines behind; keep one
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)))
