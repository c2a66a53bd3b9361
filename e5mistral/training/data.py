"""Training rows from the Hub, local files or folders, or a mixture of them, checked against the schema.

Schema (the README's "Training" section): ``query`` (str), ``positive`` (str), ``negatives`` (list[str], possibly empty),
``instruction`` (str, "" = none), ``task`` (str), ``language`` (str). Only ``query`` and
``positive`` are required: a single ``negative`` column (str) becomes ``negatives``, a missing
``negatives`` is ``[]``, a missing ``task`` is the source's name (so same-task batches separate
sources), a missing ``instruction`` or ``language`` is "".

A source is one of:

- ``sample``: the bundled synthetic sample (:func:`e5mistral.synthetic.load_sample_training_rows`);
- a local ``.json``/``.jsonl``/``.parquet`` file, or a folder holding such files, read as
  ``load_dataset(folder)`` reads it on the Hub (split by file names, ``train.jsonl``,
  ``data/<config>/train-*.parquet``, a card's ``configs:``); a folder whose file names name no
  split serves every split whole;
- a Hub dataset id (``owner/name``), with an optional configuration name;
- the folder ``scripts/generate_data.py`` writes (Parquet per kind under ``data/<kind>/``, a card
  whose ``configs:`` are kinds), or the Hub repo it was pushed to: see below.

Generated data. A folder or Hub dataset whose configurations are all task kinds
(``short_long``, ``long_short``, ``short_short``, ``long_long``, ``sts``, ``bitext``; read from its
card as ``datasets.get_dataset_config_names`` reads it) is recognised as the output of
``scripts/generate_data.py``. Each kind is loaded through ``datasets`` (``load_dataset(source,
kind)``, so a local folder and its Hub copy load alike) and its raw fields are converted to
training rows by the project's own mapping, :func:`e5mistral.synthetic.to_training_row` (the table
in ``e5mistral/synthetic/validation.py``): the brainstormed task is the instruction, ``task`` is the
kind. The configuration picks the kinds: none (the default) loads every kind the dataset has, and
a comma list picks some by name::

    python scripts/train.py --config configs/demo.yaml --dataset_name synthetic-data
    python scripts/train.py --config configs/demo.yaml --dataset_name synthetic-data --dataset_config short_long,sts

    >>> rows = load_training_data("synthetic-data", config="short_long,sts")  # doctest: +SKIP
    >>> sorted(set(rows["task"]))  # doctest: +SKIP
    ['short_long', 'sts']

A kind-named configuration that already has ``query`` and ``positive`` columns is taken as
training rows as it is; one with neither those nor its kind's fields is an error naming the
missing columns. In a mixture the configuration applies to every source that has configurations.

A mixture is ``"a=0.7,b=0.3"``: ratios are normalised to shares of the result, and the result is
as large as possible without repeating rows of any source (as TRL's dataset mixtures do): the
first ``round(share * N)`` shuffled rows of each source are kept.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets
from datasets import Dataset, Features, Sequence, Value

from e5mistral.errors import UserError, first_line

__all__ = [
    "SCHEMA_COLUMNS",
    "SCHEMA_FEATURES",
    "load_rows",
    "load_training_data",
    "parse_mixture",
    "read_data_file",
    "validate_rows",
]

logger = logging.getLogger(__name__)

SCHEMA_COLUMNS = ("query", "positive", "negatives", "instruction", "task", "language")
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Every source is cast to these types, so a mixture never depends on the order of its sources or on
# what a source's first rows let pyarrow infer (an all-empty `negatives` column is list<null>).
SCHEMA_FEATURES = Features(
    {
        "query": Value("string"),
        "positive": Value("string"),
        "negatives": Sequence(Value("string")),
        "instruction": Value("string"),
        "task": Value("string"),
        "language": Value("string"),
    }
)


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
            raise UserError(f"dataset_name={spec!r} has an empty entry; write `a=0.7,b=0.3` or a single source.")
        name, sep, ratio = part.rpartition("=") if "=" in part else (part, "", "")
        if sep:
            try:
                value = float(ratio)
            except ValueError:
                raise UserError(
                    f"dataset_name entry {part!r}: ratio {ratio!r} is not a number; write `{name}=0.5`."
                ) from None
            if not value > 0:
                raise UserError(f"dataset_name entry {part!r}: ratio must be > 0.")
            sources.append((name.strip(), value))
        else:
            sources.append((part, None))
    if len(sources) > 1 and any(r is None for _, r in sources) and not all(r is None for _, r in sources):
        raise UserError(f"dataset_name={spec!r}: give a ratio to every source of the mixture or to none.")
    return sources


def load_rows(source: str, split: str = "train", config: str | None = None) -> Dataset:
    """Load one source (see module docstring) and bring it to the schema; errors name column and row.

    Example:
        >>> rows = load_rows("sample")
        >>> rows.column_names
        ['query', 'positive', 'negatives', 'instruction', 'task', 'language']
    """
    path = Path(source).expanduser()
    if source == "sample" and not path.exists():
        from e5mistral.synthetic import load_sample_training_rows

        dataset = Dataset.from_list(load_sample_training_rows())
    elif path.is_file():
        dataset = read_data_file(path)
    elif path.is_dir():
        if (kinds := _generated_kinds(str(path))) is not None:  # written by scripts/generate_data.py
            return _load_generated(str(path), kinds, split, config)
        if (path / "raw" / "generations.jsonl").is_file() and not (path / "data").is_dir():
            raise UserError(
                f"dataset folder {str(path)!r} holds a generation log (raw/generations.jsonl) but no exported data/; "
                "rerun the same scripts/generate_data.py command without --no-export (it resumes, then exports)."
            )
        dataset = _load_folder(path, split, config)
    elif _looks_like_a_path(source):
        raise UserError(
            f"dataset {source!r}: no such file or folder; check the path (a Hub dataset id is written owner/name)."
        )
    else:
        if (kinds := _generated_kinds(source)) is not None:  # a generated dataset pushed to the Hub
            return _load_generated(source, kinds, split, config)
        try:
            dataset = datasets.load_dataset(source, config, split=split)
        except (OSError, ValueError, ConnectionError) as error:  # not found, offline, gated, unknown split
            raise UserError(
                f"dataset {source!r} could not be loaded from the Hub ({type(error).__name__}: {first_line(error)}); "
                "check the id, the network and HF_TOKEN, or pass a local file or folder."
            ) from None
    if len(dataset) == 0:
        raise UserError(f"dataset {source!r} (split {split!r}) has no rows; add rows or point at another source.")
    return validate_rows(dataset, source)


def _looks_like_a_path(source: str) -> bool:
    """A name that can only be a local path: a data-file extension, ./ ../ / ~, or more than one slash."""
    return (
        Path(source).suffix in _BUILDERS
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or os.sep != "/" and os.sep in source
    )


def read_data_file(path: str | os.PathLike) -> Dataset:
    """One local .json/.jsonl/.parquet file as a `Dataset`, as it is (no schema): empty, unreadable or
    mis-typed files are one clear `UserError`.

    Example:
        >>> read_data_file("pairs.jsonl").column_names  # doctest: +SKIP
        ['question', 'answer']
    """
    path = Path(path)
    if path.suffix not in _BUILDERS:
        raise UserError(
            f"dataset file {str(path)!r}: unsupported extension {path.suffix!r}; use .json, .jsonl or .parquet."
        )
    if path.stat().st_size == 0 or (path.suffix != ".parquet" and not path.read_bytes().strip()):
        raise UserError(f"dataset file {str(path)!r} is empty; write one JSON object per line, or fix the path.")
    builder = _BUILDERS[path.suffix]
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__ or error
        what = "JSON (one object per line for .jsonl)" if builder == "json" else "Parquet"
        raise UserError(
            f"dataset file {str(path)!r} is not valid {what}: {first_line(cause)}; fix the file or its extension."
        ) from None


def _load_folder(folder: Path, split: str, config: str | None) -> Dataset:
    """A local folder read as the Hub reads a dataset repository; with no split in any file name, every
    split is the whole folder."""
    from datasets.data_files import get_data_patterns

    try:
        patterns = get_data_patterns(str(folder))
    except FileNotFoundError:
        raise UserError(
            f"dataset folder {str(folder)!r} holds no .json/.jsonl/.parquet files; point at the folder of the rows."
        ) from None
    named_splits = not (list(patterns) == ["train"] and patterns["train"] == ["**"])
    try:
        return datasets.load_dataset(str(folder), config, split=split if named_splits else "train")
    except ValueError as error:
        message = str(error)
        if "Unknown split" in message or "Bad split" in message:
            splits = [str(s) for s in patterns]
            raise UserError(
                f"dataset folder {str(folder)!r} has the splits {splits} (from its file names), not {split!r}; "
                "pick one of them."
            ) from None
        if "Config name is missing" in message or "BuilderConfig" in message:
            raise UserError(f"dataset folder {str(folder)!r}: {first_line(error)}; pass its dataset_config.") from None
        raise
    except datasets.exceptions.DatasetGenerationError as error:
        raise UserError(
            f"dataset folder {str(folder)!r}: a data file cannot be read ({first_line(error.__cause__ or error)}); "
            "fix or remove it."
        ) from None


def _generated_kinds(source: str) -> list[str] | None:
    """The configurations of ``source`` when every one is a task kind (a dataset written by
    ``scripts/generate_data.py``), else ``None`` (a plain folder or Hub dataset, loaded as before)."""
    from e5mistral.synthetic import KINDS

    try:
        names = datasets.get_dataset_config_names(source)
    except (OSError, ValueError, ConnectionError):  # no data files, not on the Hub, offline: the plain path reports it
        return None
    return list(names) if names and set(names) <= set(KINDS) else None


def _parse_kinds(source: str, kinds: list[str], config: str | None) -> list[str]:
    if config is None or not config.strip():
        return kinds
    chosen = [name.strip() for name in config.split(",")]
    if not all(chosen):
        raise UserError(
            f"dataset_config={config!r} has an empty entry; write kinds separated by commas, e.g. short_long,sts."
        )
    unknown = [name for name in chosen if name not in kinds]
    if unknown:
        raise UserError(
            f"dataset {source!r} has the kinds {', '.join(kinds)}, not {', '.join(unknown)}; "
            "pick some of them (dataset_config=short_long,sts) or leave dataset_config unset for all."
        )
    return list(dict.fromkeys(chosen))


def _load_generated(source: str, kinds: list[str], split: str, config: str | None) -> Dataset:
    """The chosen kinds of a generated dataset, each converted by `to_training_row` and validated."""
    from e5mistral.synthetic import OUTPUT_FIELDS, to_training_row

    parts, chosen = [], _parse_kinds(source, kinds, config)
    for kind in chosen:
        label = f"{source} ({kind})"
        try:
            raw = datasets.load_dataset(source, kind, split=split)
        except ValueError as error:
            if "Unknown split" in str(error) or "Bad split" in str(error):
                raise UserError(
                    f"dataset {label} has no split {split!r} ({first_line(error)}); generated data has only 'train'."
                ) from None
            raise
        except (OSError, ConnectionError) as error:
            raise UserError(
                f"dataset {label} could not be loaded ({type(error).__name__}: {first_line(error)}); "
                "check the path or id, the network and HF_TOKEN."
            ) from None
        except datasets.exceptions.DatasetGenerationError as error:
            raise UserError(
                f"dataset {label}: a data file cannot be read ({first_line(error.__cause__ or error)}); "
                "fix it or export the folder again."
            ) from None
        columns = set(raw.column_names)
        if not {"query", "positive"} <= columns:
            missing = [name for name in (*OUTPUT_FIELDS[kind], "task", "language") if name not in columns]
            if missing:
                raise UserError(
                    f"dataset {label}: a {kind} configuration needs the columns {', '.join(missing)} (or training "
                    f"rows: query, positive), got {sorted(columns)}; export it again with scripts/generate_data.py."
                )
            raw = raw.map(
                lambda row, kind=kind: to_training_row(kind, row),
                remove_columns=raw.column_names,
                features=SCHEMA_FEATURES,
            )
        if len(raw) == 0:
            raise UserError(f"dataset {label} (split {split!r}) has no rows; pick other kinds or generate more.")
        parts.append(validate_rows(raw, label))
    logger.info(f"dataset {source}: " + ", ".join(f"{kind} {len(p)} rows" for kind, p in zip(chosen, parts)))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def validate_rows(dataset: Dataset, source: str = "dataset") -> Dataset:
    """Check types row by row, fill optional columns, keep only the schema's columns (in order)."""
    columns = set(dataset.column_names)
    for name in ("query", "positive"):
        if name not in columns:
            raise UserError(
                f"{source}: required column {name!r} is missing (columns: {sorted(columns)}); rename the column "
                f"holding the {'query text' if name == 'query' else 'relevant document'} to {name!r}."
            )
    if "negatives" in columns and "negative" in columns:
        raise UserError(f"{source}: has both 'negative' and 'negatives' columns; keep one.")
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
                raise UserError(
                    f"{source}: column {name!r}, row {row}: expected {expected}, got {value!r}; fix or drop the row."
                )
    from e5mistral.instructions import get_instruction

    for text in set(dataset["instruction"]):
        try:
            get_instruction(text)  # a mistyped instruction name fails here, not mid-training
        except UserError as error:
            raise UserError(f"{source}: column 'instruction': {error}") from None
    return dataset.select_columns(list(SCHEMA_COLUMNS)).cast(SCHEMA_FEATURES)


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
    return datasets.concatenate_datasets(loaded).shuffle(seed=seed)
