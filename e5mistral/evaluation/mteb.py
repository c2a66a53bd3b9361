"""MTEB (2.x) wrapper: the per-task instruction goes on the query side, as the recipe evaluates.

mteb calls ``encode(inputs, task_metadata=..., prompt_type=...)``. The rule here:

- ``prompt_type == "document"`` (the corpus side of retrieval and reranking): embedded bare.
- anything else -- queries, and the symmetric tasks where mteb passes no prompt type (STS,
  bitext mining, summarization, pair classification, classification, clustering): embedded as
  ``Instruct: {instruction}\\nQuery: {text}``. So symmetric tasks are instructed on both sides,
  as the official E5-mistral evaluation does.

The instruction for a task is looked up, first match wins, in ``instructions`` by task name,
then by task type (e.g. ``"STS"``), then by prompt type (``"query"``), then the task's own
``TaskMetadata.prompt``, then mteb's default for the task's type (mteb's ``AbsEncoder.get_instruction``).

Example:

```python
>>> import mteb
>>> from e5mistral.evaluation.mteb import E5MtebEncoder
>>> model = E5MtebEncoder.from_pretrained("out/my-e5", instructions={"SciFact": "scientific_claims"})
>>> results = mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]), cache=None)
>>> results.task_results[0].get_score()
```
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction
from mteb.types import PromptType

from e5mistral.instructions import get_instruction

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

    from .retrieval import Embedder

__all__ = ["E5MtebEncoder", "e5_model_meta"]


def _model_name(name_or_path: str) -> str:
    """mteb wants 'organization/model'; a local folder becomes 'local/<folder name>'."""
    path = Path(name_or_path)
    if path.exists():
        return f"local/{path.resolve().name}"
    if "/" not in name_or_path:
        return f"local/{name_or_path}"
    return name_or_path


def _load(model_name: str, revision: str | None = None, **kwargs: Any) -> E5MtebEncoder:
    """`ModelMeta.loader`: what `meta.load_model()` and mteb's CLI call."""
    return E5MtebEncoder.from_pretrained(kwargs.pop("name_or_path", model_name), revision=revision, **kwargs)


def e5_model_meta(
    name_or_path: str,
    *,
    revision: str | None = None,
    embed_dim: int | None = None,
    max_tokens: int | None = None,
    n_parameters: int | None = None,
    base_model: str | None = None,
    training_datasets: set[str] | None = None,
    release_date: str | None = None,
    license: str | None = None,
) -> ModelMeta:
    """A `ModelMeta` for an e5mistral model; fields without data stay None (mteb's "unknown").

    Example:

    ```python
    >>> meta = e5_model_meta("my-org/my-e5", embed_dim=4096, max_tokens=512)
    >>> meta.similarity_fn_name.value, meta.use_instructions
    ('cosine', True)
    ```
    """
    return ModelMeta(
        loader=_load,
        loader_kwargs={"name_or_path": str(name_or_path)},
        name=_model_name(str(name_or_path)),
        revision=revision,
        release_date=release_date,
        languages=None,
        n_parameters=n_parameters,
        memory_usage_mb=None,
        max_tokens=max_tokens,
        embed_dim=embed_dim,
        license=license,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch", "Transformers", "Sentence Transformers", "safetensors"],
        reference=None,
        similarity_fn_name=ScoringFunction.COSINE,
        use_instructions=True,
        training_datasets=training_datasets,
        adapted_from=base_model,
        model_type=["dense"],
    )


class E5MtebEncoder(AbsEncoder):
    """An mteb encoder around :class:`e5mistral.E5Embedder` (or anything with the same methods).

    Args:
        embedder: has ``encode_queries(texts, instruction=...)`` and ``encode_documents(texts)``
            returning `(N, D)` normalised tensors.
        instructions: overrides, keyed by task name, task type or prompt type; values are
            instruction texts or names from :data:`e5mistral.INSTRUCTIONS`.
        model_meta: defaults to :func:`e5_model_meta` with the embedder's dimension and length.
    """

    def __init__(
        self,
        embedder: Embedder,
        instructions: Mapping[str, str] | None = None,
        model_meta: ModelMeta | None = None,
        name_or_path: str = "local/e5mistral",
    ) -> None:
        self.embedder = embedder
        self.prompts_dict = {key: get_instruction(value) for key, value in (instructions or {}).items()}
        if model_meta is None:
            config = getattr(getattr(embedder, "model", None), "config", None)
            model_meta = e5_model_meta(
                name_or_path,
                embed_dim=getattr(config, "hidden_size", None),
                max_tokens=getattr(embedder, "max_length", None),
            )
        self.mteb_model_meta = model_meta

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        instructions: Mapping[str, str] | None = None,
        revision: str | None = None,
        device: str | None = None,
        **embedder_kwargs: Any,
    ) -> E5MtebEncoder:
        """Load an `E5Embedder` from a folder or Hub id (at ``revision``, a Hub branch, tag or commit) and wrap it.

        The revision is also the ``ModelMeta``'s, so mteb's results name the weights evaluated.

        Example:

        ```python
        >>> encoder = E5MtebEncoder.from_pretrained("intfloat/e5-mistral-7b-instruct", revision="main", device="cuda")
        >>> encoder.mteb_model_meta.revision
        'main'
        ```
        """
        from e5mistral.encoding import E5Embedder

        embedder = E5Embedder.from_pretrained(name_or_path, revision=revision, device=device, **embedder_kwargs)
        encoder = cls(embedder, instructions=instructions, name_or_path=str(name_or_path))
        if revision is not None:
            encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"revision": revision})
        return encoder

    def instruction_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """The instruction this task's inputs of `prompt_type` get; None for documents."""
        if prompt_type == PromptType.document:
            return None
        return get_instruction(self.get_instruction(task_metadata, prompt_type)) or None

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed the texts of `inputs`; returns an `(N, D)` float32 array, rows in input order."""
        texts = [text for batch in inputs for text in batch["text"]]
        show_progress_bar = kwargs.get("show_progress_bar")
        batch_size = kwargs.get("batch_size")
        encode_kwargs = {"show_progress_bar": show_progress_bar, "batch_size": batch_size}
        instruction = self.instruction_for(task_metadata, prompt_type)
        if prompt_type == PromptType.document:
            emb = self.embedder.encode_documents(texts, **encode_kwargs)  # (N, D)
        else:
            emb = self.embedder.encode_queries(texts, instruction=instruction, **encode_kwargs)  # (N, D)
        return emb.float().cpu().numpy()
