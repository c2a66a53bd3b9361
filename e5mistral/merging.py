"""Merge several trained embedding-model folders into one: linear (weighted average) or slerp.

    python scripts/merge.py out/a out/b --weights 0.5 0.5 --method linear --output out/merged
    python scripts/merge.py out/a out/b --method slerp --t 0.3 --output out/merged

Every input is a trained folder (``save_model_folder``, the training command's final save) or a
LoRA adapter folder (``keep_adapter: true`` leaves one in ``<output_dir>/adapter``). All must be
the same architecture with the same E5 settings (family, shapes, pooling, normalisation,
attention direction) and the same tokenizer; every tensor must be in every input.

LoRA adapters are merged into their base first (peft ``merge_and_unload``), then the full weights
are merged, rather than merging the adapters' factors: averaging ``A`` and ``B`` separately is not
averaging the updates (``B @ A`` is not linear in the pair), and inputs with different ranks or
targets, or a mix of adapters and fully trained folders, then merge alike. For the linear method
on a shared base this equals averaging the updates ``B @ A`` themselves, since the weights sum to 1.

The merged folder is written by :func:`e5mistral.save_model_folder` (weights, code, tokenizer,
Sentence-Transformers files with the first input's prompts, length and ``truncate_dim``), plus ``merge_info.json``
(method, weights, inputs), so it loads everywhere a trained folder does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .errors import UserError

__all__ = ["MERGE_METHODS", "linear_merge", "load_for_merge", "merge_folders", "merge_state_dicts", "slerp"]

MERGE_METHODS = ("linear", "slerp")
# Config fields that may differ between inputs of one architecture (bookkeeping, not shape or behaviour).
_IGNORED_CONFIG_FIELDS = ("_name_or_path", "dtype", "torch_dtype", "transformers_version", "architectures", "auto_map")
_PARALLEL_EPS = 1e-6  # |sin(angle)| below this: the vectors are (anti-)parallel and slerp falls back to lerp


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two tensors of one shape, treated as flat vectors.

    ``sin((1 - t) w) / sin(w) * a + sin(t w) / sin(w) * b``, ``w`` the angle between ``a`` and
    ``b``: it follows the arc between their directions instead of the chord (a plain average of
    two unrelated directions shrinks their norm). Where ``a`` and ``b`` are (anti-)parallel, or
    one is zero, the arc is undefined and it falls back to ``(1 - t) a + t b``. Computed in
    float64, returned in ``a``'s dtype; ``t = 0`` gives ``a`` and ``t = 1`` gives ``b`` exactly.

    Example:

    ```python
    >>> slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5)   # on the arc, norm 1
    tensor([0.7071, 0.7071])
    >>> slerp(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]), 0.5)   # parallel: linear
    tensor([1.5000, 0.0000])
    ```
    """
    x, y = a.detach().double().flatten(), b.detach().double().flatten()  # (N,), (N,)
    nx, ny = x.norm(), y.norm()
    if nx == 0 or ny == 0:
        out = (1 - t) * x + t * y
    else:
        cos = torch.clamp(x @ y / (nx * ny), -1.0, 1.0)
        angle = torch.arccos(cos)
        sin = torch.sin(angle)
        if sin.abs() < _PARALLEL_EPS:
            out = (1 - t) * x + t * y
        else:
            out = torch.sin((1 - t) * angle) / sin * x + torch.sin(t * angle) / sin * y
    return out.view(a.shape).to(a.dtype)


def linear_merge(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i x_i`` for weights already summing to 1, in float64, returned in the first tensor's dtype.

    Example: ``linear_merge([torch.ones(2), torch.zeros(2)], [0.25, 0.75])`` is ``tensor([0.25, 0.25])``.
    """
    total = torch.zeros(tensors[0].shape, dtype=torch.float64)
    for tensor, weight in zip(tensors, weights, strict=True):
        total += float(weight) * tensor.detach().double()
    return total.to(tensors[0].dtype)


def _normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise UserError(f"--weights has {len(weights)} values for {n} models; give one weight per model.")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"--weights {' '.join(map(str, weights))}: weights must be >= 0 and not all 0.")
    return [w / sum(weights) for w in weights]


def merge_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    method: str = "linear",
    weights: Sequence[float] | None = None,
    t: float = 0.5,
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Merge state dicts tensor by tensor.

    Args:
        state_dicts: two or more, with the same keys and shapes (else a :class:`UserError` naming them).
        method: ``"linear"`` (``weights``, normalised to sum to 1; equal when omitted) or
            ``"slerp"`` (exactly two inputs, ``t`` in [0, 1]: 0 is the first, 1 the second).
        names: how errors name the inputs (folders); ``model 1``, ``model 2``, ... by default.

    Returns:
        The merged state dict, each tensor in the first input's dtype. Tensors that are not
        floating point (none in these models) must be equal in every input and are kept.

    Example: ``merge_state_dicts([a.state_dict(), b.state_dict()], "slerp", t=0.3)``.
    """
    n = len(state_dicts)
    names = list(names) if names is not None else [f"model {i + 1}" for i in range(n)]
    if method not in MERGE_METHODS:
        raise UserError(f"merge method {method!r} is not supported; use one of {', '.join(MERGE_METHODS)}.")
    if n < 2:
        raise UserError(f"merging needs at least two models, got {n}.")
    if method == "slerp" and (n != 2 or not 0.0 <= t <= 1.0):
        raise UserError(f"slerp merges exactly two models with --t in [0, 1]; got {n} models and t={t}.")
    weights = _normalised_weights(weights, n) if method == "linear" else None
    first = state_dicts[0]
    for name, state in zip(names[1:], state_dicts[1:], strict=True):
        missing, extra = sorted(set(first) - set(state)), sorted(set(state) - set(first))
        if missing or extra:
            what = f"lacks {', '.join(missing[:4])}" if missing else f"has extra {', '.join(extra[:4])}"
            raise UserError(
                f"cannot merge: {name} {what} (tensors of {names[0]}); the models are not one architecture."
            )
        for key, tensor in first.items():
            if state[key].shape != tensor.shape:
                raise UserError(
                    f"cannot merge: {key} is {tuple(state[key].shape)} in {name} but "
                    f"{tuple(tensor.shape)} in {names[0]}."
                )
    merged = {}
    for key, tensor in first.items():
        tensors = [state[key] for state in state_dicts]
        if not tensor.is_floating_point():
            if not all(torch.equal(tensor, other) for other in tensors[1:]):
                raise UserError(f"cannot merge: the integer tensor {key} differs between the models.")
            merged[key] = tensor.clone()
        elif method == "linear":
            merged[key] = linear_merge(tensors, weights)
        else:
            merged[key] = slerp(tensors[0], tensors[1], t)
    return merged


def _tokenizer_folder(*candidates: Path) -> Path | None:
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    return next((c for c in candidates if c is not None and any((c / n).is_file() for n in names)), None)


def load_for_merge(folder, base: str | None = None):
    """The model (an ``E5MistralModel``, eval mode) and tokenizer of one merge input.

    A trained folder loads as it is. A LoRA adapter folder (``adapter_config.json``) is merged into
    its base: ``base`` when given, else the adapter's ``base_model_name_or_path``. Its E5 settings
    (pooling, normalisation, attention direction) and tokenizer come from the trained folder it was
    saved in (``<output_dir>/adapter``: the parent), else from the base.

    Example: ``model, tokenizer = load_for_merge("out/run1/adapter")``.
    """
    from .configuration_e5mistral import E5MistralConfig
    from .modeling_e5mistral import CheckpointMismatchError, E5MistralModel
    from .tokenization import load_tokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise UserError(
            f"{folder} is not a model folder (no config.json or adapter_config.json); pass trained folders."
        )
    try:
        if not (folder / "adapter_config.json").is_file():
            return E5MistralModel.from_pretrained(folder).eval(), load_tokenizer(folder)
        from peft import PeftModel

        adapter_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        base_path = base or adapter_config.get("base_model_name_or_path")
        if not base_path:
            raise UserError(f"{folder}: the adapter names no base model; pass --base <the folder it was trained from>.")
        trained = folder.parent if (folder.parent / "config.json").is_file() else None
        settings = {}
        if trained is not None:
            config = E5MistralConfig.from_pretrained(trained)
            settings = {key: getattr(config, key) for key in ("pooling", "normalize", "bidirectional")}
        model = E5MistralModel.from_pretrained(base_path, **settings)
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload().eval()
        tokenizer_folder = _tokenizer_folder(folder, trained, Path(base_path))
        return model, load_tokenizer(tokenizer_folder or base_path)
    except CheckpointMismatchError as error:
        raise UserError(str(error).replace("\n", " ")) from None


def _comparable_config(model) -> dict:
    return {k: v for k, v in model.config.to_dict().items() if k not in _IGNORED_CONFIG_FIELDS}


def _check_same_architecture(models, tokenizers, names) -> None:
    first = _comparable_config(models[0])
    for name, model, tokenizer in zip(names[1:], models[1:], tokenizers[1:], strict=True):
        other = _comparable_config(model)
        differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if differ:
            shown = ", ".join(f"{k} ({first.get(k)!r} vs {other.get(k)!r})" for k in differ[:3])
            raise UserError(
                f"cannot merge {names[0]} and {name}: their configs differ in {shown}; "
                "merge models of one architecture."
            )
        if tokenizer.get_vocab() != tokenizers[0].get_vocab():
            raise UserError(
                f"cannot merge {names[0]} and {name}: their tokenizers differ; merge models trained from one base."
            )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def merge_folders(
    folders: Sequence[str | Path],
    output: str | Path,
    method: str = "linear",
    weights: Sequence[float] | None = None,
    t: float = 0.5,
    base: str | None = None,
) -> Path:
    """Merge trained folders (or LoRA adapters) into one folder at ``output``; see the module docstring.

    Args:
        folders: two or more trained folders or adapter folders.
        output: the folder to write (created; an existing non-empty folder is refused).
        method, weights, t: as for :func:`merge_state_dicts`.
        base: the base model of adapter inputs, overriding their ``base_model_name_or_path``.

    Returns:
        ``output`` as a ``Path``.

    Example:

    ```python
    >>> merge_folders(["out/a", "out/b"], "out/merged", method="linear", weights=[0.7, 0.3])
    >>> SentenceTransformer("out/merged", trust_remote_code=True).encode(["hello"])
    ```
    """
    from .export import save_model_folder

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--output {out} exists and is not an empty folder; choose a new folder.")
    names = [str(f) for f in folders]
    loaded = [load_for_merge(folder, base=base) for folder in folders]
    models, tokenizers = [m for m, _ in loaded], [tok for _, tok in loaded]
    _check_same_architecture(models, tokenizers, names)
    merged = merge_state_dicts([m.state_dict() for m in models], method, weights, t, names=names)
    model = models[0]
    model.load_state_dict(merged, strict=True)  # same keys and shapes, checked above
    first = Path(folders[0]).parent if (Path(folders[0]) / "adapter_config.json").is_file() else Path(folders[0])
    st_config = _read_json(first / "sentence_bert_config.json")
    st_files_config = _read_json(first / "config_sentence_transformers.json")
    save_model_folder(
        model,
        tokenizers[0],
        out,
        max_seq_length=st_config.get("max_seq_length", 512),
        prompts=st_files_config.get("prompts"),
        truncate_dim=st_files_config.get("truncate_dim"),  # a Matryoshka model's loaders keep their size
    )
    info = {"method": method, "inputs": names}
    info.update({"weights": _normalised_weights(weights, len(names))} if method == "linear" else {"t": t})
    (out / "merge_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out
