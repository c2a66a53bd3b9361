"""Publish to the Hugging Face Hub: stage the exact upload folder, render the model card, push.

The model card is ``model_card.md`` (a Jinja template in ``e5mistral/templates/``, linked from the
repository root) rendered with
``huggingface_hub.ModelCard.from_template`` from what the run left on disk -- nothing is typed in
by hand, and a field without data is left out of the card:

===============================  ===================================================================
source (in the model folder)     what the card gets
===============================  ===================================================================
``config.json``                  architecture, pooling, normalisation, weights dtype
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

The upload folder is built from an allow-list (weights, custom code, tokenizer,
Sentence-Transformers files, optionally the LoRA adapter, and the card), so stray files such as
optimizer states or logs never leave the machine. The token comes from the ``token`` argument,
``HF_TOKEN`` or the saved ``hf auth login``; it is only handed to ``HfApi`` and never written.

Example:

```python
>>> from e5mistral.hub import export_model_folder, push_folder
>>> folder = export_model_folder("out/my-e5", "stage/my-e5", repo_id="me/my-e5", results="results.json")
>>> push_folder(folder, "me/my-e5", repo_type="model")
```
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = [
    "DEFAULT_MODEL_CARD_TEMPLATE",
    "collect_model_info",
    "export_dataset_folder",
    "export_model_folder",
    "hub_errors_as_user_errors",
    "network_errors",
    "push_folder",
    "render_model_card",
    "require_hub_token",
    "staged_push",
]

logger = logging.getLogger(__name__)

# Shipped inside the package (the repository root's model_card.md links to it), so installs have it.
DEFAULT_MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"

MODEL_FILES = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "configuration_*.py",
    "modeling_*.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "2_Normalize/*",
)
ADAPTER_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")
SKIPPED_DATASET_PARTS = {".cache", "__pycache__", ".git", ".huggingface"}

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
    "gather_across_devices": "negatives gathered across devices",
    "no_duplicates_in_batch": "no duplicate texts in a batch",
    "same_task_batches": "same-task batches",
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
    st_prompts = (_optional_json(model_dir / "config_sentence_transformers.json") or {}).get("prompts") or {}
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
        "max_seq_length": st_config.get("max_seq_length"),
        "num_parameters": _num_parameters(model_dir),
        "weights_dtype": config.get("dtype") or config.get("torch_dtype"),
    }
    hyperparameters = {
        label: _plain(args[key]) for key, label in HYPERPARAMETERS.items() if args.get(key) not in (None, "", [])
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


def _matches(rel: str, patterns) -> bool:
    """Glob match per path depth: `*.safetensors` matches top-level files only, not `adapter/...`."""
    return any(rel.count("/") == pattern.count("/") and fnmatch.fnmatchcase(rel, pattern) for pattern in patterns)


def export_model_folder(
    model_dir: str | Path,
    out_dir: str | Path,
    repo_id: str,
    results: str | Path | Mapping | None = None,
    *,
    include_adapter: bool = False,
    template_path: str | Path | None = None,
    license: str | None = None,
    **info_sources,
) -> Path:
    """Write exactly the folder that is uploaded: allow-listed model files plus ``README.md``.

    `out_dir` must be empty or absent. With `include_adapter`, ``adapter/`` (the LoRA adapter
    alone) goes too; it must exist then.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} is not empty; pass a new or empty --local-dir so it holds exactly the upload."
        )
    if not list(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{model_dir} has no *.safetensors weights; export the merged model with e5mistral.save_model_folder first."
        )
    patterns = MODEL_FILES + (ADAPTER_FILES if include_adapter else ())
    if include_adapter and not (model_dir / "adapter" / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"--include-adapter: {model_dir}/adapter/adapter_config.json does not exist; train with keep_adapter=True."
        )
    card = render_model_card(model_dir, repo_id, results, template_path=template_path, license=license, **info_sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_file() and _matches(rel, patterns):
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out_dir / rel)
            copied.append(rel)
    card.save(str(out_dir / "README.md"))
    logger.info("staged %d files + README.md in %s", len(copied), out_dir)
    return out_dir


def export_dataset_folder(data_dir: str | Path, out_dir: str | Path) -> Path:
    """Stage a dataset folder made by ``e5mistral.synthetic.export.export_dataset`` for upload.

    Copies it as it is (card ``README.md``, ``data/<config>/*.parquet``, the builder file and the
    raw log), leaving out caches and VCS folders.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not (data_dir / "README.md").is_file() or not list(data_dir.glob("data/*/*.parquet")):
        raise FileNotFoundError(
            f"{data_dir} has no README.md or no data/<config>/*.parquet; export it first with "
            f"`python scripts/generate_data.py ... --output {data_dir}` (which calls export_dataset)."
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} is not empty; pass a new or empty --local-dir so it holds exactly the upload."
        )
    shutil.copytree(
        data_dir,
        out_dir,
        ignore=lambda _dir, names: [n for n in names if n in SKIPPED_DATASET_PARTS],
        dirs_exist_ok=True,
    )
    return out_dir


def push_folder(
    folder: str | Path,
    repo_id: str,
    repo_type: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create the repo if needed and upload `folder` as it is; returns the commit URL.

    The token is `token`, else ``HF_TOKEN``, else the saved login (``hf auth login``). An error
    whose message carries a token is re-raised as a ``RuntimeError`` with the token masked.
    """
    from huggingface_hub import HfApi

    from e5mistral.synthetic.llm import redact

    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type={repo_type!r}; use 'model' or 'dataset'.")
    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type=repo_type,
            commit_message=commit_message or f"Upload {repo_type} with e5mistral",
        )
    except Exception as err:
        message = str(err)
        masked = redact(message, [token] if token else [])
        if masked == message:
            raise
        # `from None`: the original exception (and its message) must not be printed in the traceback.
        raise RuntimeError(f"pushing {folder} to {repo_type} repo {repo_id} failed: {masked}") from None
    return str(commit)


def staged_push(
    stage, *, local_dir: str | Path | None, push: bool, repo_id: str, repo_type: str, **push_kwargs
) -> tuple[Path | None, str | None]:
    """Run `stage(folder)` into `local_dir` (kept) or a temporary folder, then push that folder.

    The folder pushed is byte for byte the one `--local-dir` shows.
    """
    if local_dir is not None:
        folder = stage(Path(local_dir))
        return folder, (push_folder(folder, repo_id, repo_type, **push_kwargs) if push else None)
    with tempfile.TemporaryDirectory(prefix="e5mistral-upload-") as tmp:
        folder = stage(Path(tmp) / "upload")
        return None, (push_folder(folder, repo_id, repo_type, **push_kwargs) if push else None)


LOCAL_DIR_INSTEAD = "or pass --local-dir DIR to write the folder without uploading"


def require_hub_token(token: str | None = None, *, instead: str = LOCAL_DIR_INSTEAD) -> str:
    """The token a push will use (`token`, else ``HF_TOKEN``, else the saved ``hf auth login``);
    a :class:`~e5mistral.errors.UserError` naming the fix when there is none. `instead` is the
    alternative the message offers.

    Example:
        >>> require_hub_token("hf_abc")
        'hf_abc'
    """
    from huggingface_hub import get_token

    found = token or os.environ.get("HF_TOKEN") or get_token()
    if not found:
        raise UserError(f"no Hugging Face token to upload with: set HF_TOKEN or run `hf auth login`, {instead}")
    return found


def network_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the Hub could not be reached": offline mode
    (``HF_HUB_OFFLINE``), a refused or dropped connection, a time-out, a DNS failure.

    Example:
        >>> ConnectionError in network_errors()
        True
    """
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]  # OfflineModeIsEnabled is a ConnectionError
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextmanager
def hub_errors_as_user_errors(repo_id: str, *, instead: str = LOCAL_DIR_INSTEAD) -> Iterator[None]:
    """Turn the push failures a user fixes into one-line :class:`~e5mistral.errors.UserError` lines:
    the Hub unreachable (offline mode, no network) and a token the Hub refuses (HTTP 401/403).
    Anything else propagates unchanged. Messages pass through ``redact``.

    Example:
        >>> with hub_errors_as_user_errors("me/my-e5"):  # doctest: +SKIP
        ...     push_folder("stage/my-e5", "me/my-e5", repo_type="model")
    """
    from huggingface_hub.errors import HfHubHTTPError

    from e5mistral.synthetic.llm import redact

    try:
        yield
    except network_errors() as error:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise UserError(
                f"cannot upload {repo_id}: HF_HUB_OFFLINE is set, so the Hub is not contacted; unset it, {instead}"
            ) from None
        reason = redact(str(error)) or type(error).__name__
        raise UserError(
            f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to upload {repo_id} ({reason}); "
            f"check the network (and HF_ENDPOINT), {instead}"
        ) from None
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status not in (401, 403):
            raise
        first_line = redact(str(error)).splitlines()[0] if str(error) else f"HTTP {status}"
        raise UserError(
            f"the Hub refused the upload to {repo_id} (HTTP {status}: {first_line}); set HF_TOKEN to a token with "
            f"write access to it, or run `hf auth login`, {instead}"
        ) from None
