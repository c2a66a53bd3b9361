"""Publish to the Hugging Face Hub: render the model card, stage the exact upload folder, push.

Modules: `card` (the model card rendered from what the run left on disk: :func:`collect_model_info`,
:func:`render_model_card`), `publish` (staging and pushing, models and datasets alike, with one
error contract: :func:`push_folder`, :func:`staged_push`, :func:`require_hub_token`,
:func:`hub_errors_as_user_errors`). Tokens and redaction: :mod:`e5mistral.secrets`.

Example:

```python
>>> from e5mistral.hub import export_dataset_folder, staged_push
>>> staged_push(lambda folder: export_dataset_folder("synthetic-data", folder), local_dir=None, push=True,
...             repo_id="me/e5-synthetic", repo_type="dataset")
(None, 'https://huggingface.co/datasets/me/e5-synthetic/commit/...')
```
"""

from __future__ import annotations

from .card import DEFAULT_MODEL_CARD_TEMPLATE, collect_model_info, render_model_card
from .publish import (
    LOCAL_DIR_INSTEAD,
    export_dataset_folder,
    export_model_folder,
    hub_errors_as_user_errors,
    network_errors,
    push_folder,
    require_hub_token,
    staged_push,
)

__all__ = [
    "DEFAULT_MODEL_CARD_TEMPLATE",
    "LOCAL_DIR_INSTEAD",
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
