"""Training rows from the Hub, local files or folders, or a mixture of them, checked against the schema.

Schema (DESIGN.md): ``query`` (str), ``positive`` (str), ``negatives`` (list[str], possibly empty),
``instruction`` (str, "" = none), ``task`` (str), ``language`` (str). Only ``query`` and
``positive`` are required: a single ``negative`` column (str) becomes ``negatives``, a missing
``negatives`` is ``[]``, a missing ``task`` is the source's name (so same-task batches separate
sources), a missing ``instruction`` or ``language`` is "".

A source is one of:

- ``sample``: the bundled synthetic sample (:func:`e5mistral.synthetic.load_sample_training_rows`);
- a local ``.json``/``.jsonl``/``.parquet`` file, or a folder holding such files (split by their
  names as on the Hub, ``train-*``/``validation-*``/``test-*``; all of them when none is named so);
- a Hub dataset id (``owner/name``), with an optional configuration name.

A mixture is ``"a=0.7,b=0.3"``: ratios are normalised to shares of the result, and the result is
as large as possible without repeating rows of any source (as TRL's dataset mixtures do): the
first ``round(share * N)`` shuffled rows of each source are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
from datasets import Dataset

__all__ = ["SCHEMA_COLUMNS", "load_rows", "load_training_data", "parse_mixture", "validate_rows"]

logger = logging.getLogger(__name__)

SCHEMA_COLUMNS = ("query", "positive", "negatives", "instruction", "task", "language")
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def parse_mixture(spec: str) -> list[tuple[str, float | None]]:
    """Split ``"a=0.7,b=0.3"`` into ``[("a", 0.7), ("b", 0.3)]``; a source without ``=`` has no ratio.

    Example:
        >>> parse_mixture("data/synth.jsonl=3, intfloat/msmarco=1")
        [('data/synth.jsonl', 3.0), ('intfloat/msmarco', 1.0)]
        >>> parse_mixture("sample")
        [('sample', None)]
    """
    sources = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise ValueError(f"dataset_name={spec!r} has an empty entry; write `a=0.7,b=0.3` or a single source.")
        name, sep, ratio = part.rpartition("=") if "=" in part else (part, "", "")
        if sep:
            try:
                value = float(ratio)
            except ValueError:
                raise ValueError(
                    f"dataset_name entry {part!r}: ratio {ratio!r} is not a number; write `{name}=0.5`."
                ) from None
            if not value > 0:
                raise ValueError(f"dataset_name entry {part!r}: ratio must be > 0.")
            sources.append((name.strip(), value))
        else:
            sources.append((part, None))
    if len(sources) > 1 and any(r is None for _, r in sources) and not all(r is None for _, r in sources):
        raise ValueError(f"dataset_name={spec!r}: give a ratio to every source of the mixture or to none.")
    return sources


def load_rows(source: str, split: str = "train", config: str | None = None) -> Dataset:
    """Load one source (see module docstring) and bring it to the schema; errors name column and row.

    Example:
        >>> rows = load_rows("sample")
        >>> rows.column_names
        ['query', 'positive', 'negatives', 'instruction', 'task', 'language']
    """
    path = Path(source)
    if source == "sample" and not path.exists():
        from e5mistral.synthetic import load_sample_training_rows

        dataset = Dataset.from_list(load_sample_training_rows())
    elif path.is_file():
        if path.suffix not in _BUILDERS:
            raise ValueError(
                f"dataset file {source!r}: unsupported extension {path.suffix!r}; use .json, .jsonl or .parquet."
            )
        dataset = datasets.load_dataset(_BUILDERS[path.suffix], data_files=str(path), split="train")
    elif path.is_dir():
        files = _split_files(path, split)
        builders = {_BUILDERS[Path(f).suffix] for f in files}
        if not files or len(builders) > 1:
            raise ValueError(
                f"dataset folder {source!r} holds {len(files)} data files of kinds {sorted(builders)}; it needs "
                ".json/.jsonl or .parquet files (one kind)."
            )
        dataset = datasets.load_dataset(builders.pop(), data_files=files, split="train")
    else:
        dataset = datasets.load_dataset(source, config, split=split)
    return validate_rows(dataset, source)


def _split_files(folder: Path, split: str) -> list[str]:
    """The data files of ``split`` in a local folder, named as on the Hub (``train-*.parquet``,
    ``data/validation.jsonl``, ...); a folder with no split names serves every split whole."""
    from datasets.data_files import get_data_patterns, resolve_pattern

    patterns = get_data_patterns(str(folder))
    if list(patterns) == ["train"] and patterns["train"] == ["**"]:  # no split in any file name
        return sorted(str(f) for f in folder.rglob("*") if f.suffix in _BUILDERS)
    if split not in patterns:
        raise ValueError(
            f"dataset folder {str(folder)!r} has the splits {[str(s) for s in patterns]} (from its file names), "
            f"not {split!r}."
        )
    found = {f for pattern in patterns[split] for f in resolve_pattern(pattern, str(folder))}
    return sorted(f for f in found if Path(f).suffix in _BUILDERS)


def validate_rows(dataset: Dataset, source: str = "dataset") -> Dataset:
    """Check types row by row, fill optional columns, keep only the schema's columns (in order)."""
    columns = set(dataset.column_names)
    for name in ("query", "positive"):
        if name not in columns:
            raise ValueError(
                f"{source}: required column {name!r} is missing (columns: {sorted(columns)}); rename the column "
                f"holding the {'query text' if name == 'query' else 'relevant document'} to {name!r}."
            )
    if "negatives" in columns and "negative" in columns:
        raise ValueError(f"{source}: has both 'negative' and 'negatives' columns; keep one.")
    if "negative" in columns:
        dataset = dataset.map(
            lambda row: {"negatives": [] if row["negative"] is None else [row["negative"]]}, remove_columns=["negative"]
        )
    defaults = {"negatives": [], "instruction": "", "task": Path(source).stem or source, "language": ""}
    for name, value in defaults.items():
        if name not in dataset.column_names:
            if name == "instruction":
                logger.warning(
                    f"{source}: no 'instruction' column; queries get no instruction (the recipe has one per task)."
                )
            dataset = dataset.add_column(name, [value] * len(dataset))
    for name in SCHEMA_COLUMNS:
        for row, value in enumerate(dataset[name]):
            if name == "negatives":
                ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
                expected = "a list of non-empty strings"
            elif name in ("query", "positive"):
                ok, expected = isinstance(value, str) and bool(value.strip()), "a non-empty string"
            else:
                ok, expected = isinstance(value, str), "a string"
            if not ok:
                raise ValueError(
                    f"{source}: column {name!r}, row {row}: expected {expected}, got {value!r}; fix or drop the row."
                )
    return dataset.select_columns(list(SCHEMA_COLUMNS))


def load_training_data(spec: str, split: str = "train", config: str | None = None, seed: int = 0) -> Dataset:
    """Rows of one source, or of a mixture ``"a=0.7,b=0.3"`` (see module docstring), shuffled with ``seed``.

    Example:
        >>> len(load_training_data("sample")) > 100
        True
    """
    sources = parse_mixture(spec)
    loaded = [load_rows(name, split, config).shuffle(seed=seed) for name, _ in sources]
    if len(loaded) == 1:
        return loaded[0]
    if sources[0][1] is not None:
        total = sum(r for _, r in sources)
        shares = [r / total for _, r in sources]
        size = min(len(d) / s for d, s in zip(loaded, shares))  # largest mixture with no row repeated
        loaded = [d.select(range(min(len(d), round(s * size)))) for d, s in zip(loaded, shares)]
        logger.info("dataset mixture: " + ", ".join(f"{n}: {len(d)} rows" for (n, _), d in zip(sources, loaded)))
    features = loaded[0].features
    return datasets.concatenate_datasets([d.cast(features) for d in loaded]).shuffle(seed=seed)
