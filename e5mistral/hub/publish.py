"""Publish to the Hugging Face Hub, models and datasets alike: stage the exact upload folder, push it.

The upload folder of a model is built from an allow-list (weights, custom code, tokenizer,
Sentence-Transformers files, optionally the LoRA adapter, and the card of
:mod:`~e5mistral.hub.card`), so stray files such as optimizer states or logs never leave the
machine; a dataset folder (made by ``e5mistral.synthetic.export.export_dataset``) is copied as it
is, caches and VCS folders left out. :func:`push_folder` uploads a folder of either kind.

The error contract, one for both kinds: the token comes from the ``token`` argument, ``HF_TOKEN``
or the saved ``hf auth login`` (:func:`~e5mistral.secrets.hub_token`); it is only handed to
``HfApi`` and never written. No error shows it: an HTTP error of the Hub keeps its type (and its
status code) with the token cut out of its message, any other error that carries it is raised
again as a ``RuntimeError`` with the token masked. :func:`require_hub_token` fails early when there
is no token, and :func:`hub_errors_as_user_errors` turns the failures a user fixes (offline, the
Hub unreachable, a refused token) into one-line :class:`~e5mistral.errors.UserError` messages.

Example:

```python
>>> from e5mistral.hub import export_model_folder, push_folder
>>> folder = export_model_folder("out/my-e5", "stage/my-e5", repo_id="me/my-e5", results="results.json")
>>> push_folder(folder, "me/my-e5", repo_type="model")
```
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from ..secrets import hub_token, redact
from .card import render_model_card

__all__ = [
    "LOCAL_DIR_INSTEAD",
    "export_dataset_folder",
    "export_model_folder",
    "hub_errors_as_user_errors",
    "network_errors",
    "push_folder",
    "require_hub_token",
    "staged_push",
]

logger = logging.getLogger(__name__)

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

    The token is `token`, else ``HF_TOKEN``, else the saved login (``hf auth login``). An HTTP
    error of the Hub is raised again as it is, its message and server message with every token cut
    out (a server may echo the Authorization header); any other error whose message carries a
    token is raised again as a ``RuntimeError`` with the token masked.

    Example:
        >>> push_folder("stage/my-e5", "me/my-e5", "model", private=True)  # doctest: +SKIP
        'https://huggingface.co/me/my-e5/commit/...'
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type={repo_type!r}; use 'model' or 'dataset'.")
    api = HfApi(token=hub_token(token, saved=False))
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type=repo_type,
            commit_message=commit_message or f"Upload {repo_type} with e5mistral",
        )
    except HfHubHTTPError as error:  # keeps its type: its status code tells a refused token from a fault
        secrets = [token, hub_token()]
        error.args = tuple(redact(a, secrets) if isinstance(a, str) else a for a in error.args)
        error.server_message = redact(error.server_message or "", secrets) or None
        raise
    except Exception as error:
        message = str(error)
        masked = redact(message, [token])
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
    found = hub_token(token)
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
