"""A `datasets` builder for the E5-mistral synthetic data, one config per task kind.

This file is self-contained (it imports only the standard library and `datasets`), so a copy of
it can sit in the dataset repository beside the Parquet files as the recipe that made them. It
reads the append-only generation log written by `e5mistral.synthetic.generate` (JSONL, one
line per request id) and yields the successful examples of one kind, ordered by request
position, with exact duplicates dropped. It imports nothing of `e5mistral`: to create a missing
log first (a `generation` dict), use `e5mistral.synthetic.E5SyntheticData`, the subclass in
`e5mistral.synthetic.generate` that runs the generation.

`datasets` >= 4 does not run loading scripts from a repository: on the Hub, load the Parquet
files (`load_dataset(repo, "short_long")`); use this builder directly to rebuild them:

Example:
    >>> from e5mistral.synthetic.builder import E5SyntheticData
    >>> builder = E5SyntheticData(config_name="sts", log_path="raw/generations.jsonl")  # doctest: +SKIP
    >>> builder.download_and_prepare()  # doctest: +SKIP
    >>> builder.as_dataset("train")[0]["S1"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import datasets

KINDS: tuple[str, ...] = ("short_long", "long_short", "short_short", "long_long", "sts", "bitext")

# The JSON fields the LLM returns for one example of each kind (the paper's appendix, as listed in the README's "Synthetic data").
OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "short_long": ("user_query", "positive_document", "hard_negative_document"),
    "long_short": ("input_text", "label", "misleading_label"),
    "short_short": ("input", "positive_document"),
    "long_long": ("input", "positive_document"),
    "sts": ("S1", "S2", "S3"),
    "bitext": ("S1", "S2", "S3"),
}

_str = datasets.Value("string")
_float = datasets.Value("float32")

# Placeholder values a request was drawn with, kept as typed columns for analysis.
PLACEHOLDER_FEATURES: dict[str, dict[str, datasets.Value]] = {
    "short_long": {
        "query_type": _str,
        "query_length": _str,
        "clarity": _str,
        "num_words": datasets.Value("int32"),
        "difficulty": _str,
    },
    "long_short": {"num_words": _str, "clarity": _str, "difficulty": _str},
    "short_short": {},
    "long_long": {},
    "sts": {"unit": _str, "high_score": _float, "low_score": _float, "difficulty": _str},
    "bitext": {"tgt_lang": _str, "high_score": _float, "low_score": _float},
}

_DESCRIPTIONS: dict[str, str] = {
    "short_long": "Retrieval: a short query, a long relevant document and a hard negative.",
    "long_short": "Classification: an input text, its label and a misleading label.",
    "short_short": "Matching of two short texts (phrases or one or two sentences).",
    "long_long": "Matching of two long documents.",
    "sts": "Monolingual semantic similarity triples: S2 is close to S1, S3 less so.",
    "bitext": "Bitext triples: S2 translates S1, S3 is a fluent but wrong translation.",
}


def features_for(kind: str) -> datasets.Features:
    """The typed `Features` of one config: ids and provenance, the LLM's fields, placeholders.

    Example:
        >>> list(features_for("sts"))[:5]
        ['id', 'task', 'language', 'template', 'model']
    """
    if kind not in OUTPUT_FIELDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    columns: dict[str, Any] = {
        "id": _str,
        "task": _str,
        "language": _str,
        "template": datasets.Value("int32"),
        "model": _str,
    }
    columns.update({field: _str for field in OUTPUT_FIELDS[kind]})
    columns.update(PLACEHOLDER_FEATURES[kind])
    return datasets.Features(columns)


def read_generation_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a generation log: the first record of each request id, in file order.

    A last line cut short by a killed writer (no trailing newline, not valid JSON) is ignored;
    any other unreadable line is an error naming its line number.

    Example:
        >>> read_generation_log("raw/generations.jsonl")[0]["status"]  # doctest: +SKIP
        'ok'
    """
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    with open(path, "rb") as f:  # streamed (a full-scale log is gigabytes); bytes, as a cut tail may split a character
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:  # JSONDecodeError or UnicodeDecodeError
                if not line.endswith(b"\n"):  # the unterminated tail of a killed run
                    continue
                raise ValueError(f"{path}:{number}: not a JSON line ({error}); the log is corrupt") from None
            if record["id"] not in seen:
                seen.add(record["id"])
                records.append(record)
    return records


def dedup_key(record: dict[str, Any]) -> str:
    """Exact-duplicate key of an example record: its kind and the LLM's fields, verbatim."""
    output = record["output"]
    return json.dumps([record["kind"], [output[f] for f in OUTPUT_FIELDS[record["kind"]]]], ensure_ascii=False)


def dataset_rows(records: Iterable[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    """The rows of config `kind`: successful example records ordered by request position, the
    first of any exact duplicates kept, flattened into the columns of `features_for(kind)`.

    The order depends only on the request positions, never on the arrival order, so a resumed
    run yields the same rows as an uninterrupted one.
    """
    chosen = sorted(
        (r for r in records if r["kind"] == kind and r["step"] == "example" and r["status"] == "ok"),
        key=lambda r: r["index"],
    )
    seen: set[str] = set()
    for record in chosen:
        key = dedup_key(record)
        if key in seen:
            continue
        seen.add(key)
        row = {
            "id": record["id"],
            "task": record["task"],
            "language": record["language"],
            "template": record["template"],
            "model": record.get("model") or "",
        }
        row.update({field: record["output"][field] for field in OUTPUT_FIELDS[kind]})
        for name, feature in PLACEHOLDER_FEATURES[kind].items():
            value = record["placeholders"].get(name)
            row[name] = None if value is None else (str(value) if feature.dtype == "string" else value)
        yield row


@dataclasses.dataclass
class E5SyntheticConfig(datasets.BuilderConfig):
    """One task kind. `log_path`: the generation log to build from (else the `train` data file);
    `generation`: keyword arguments of `e5mistral.synthetic.generate.generate`, with which
    `e5mistral.synthetic.E5SyntheticData` creates the log first when it does not exist yet."""

    log_path: str | None = None
    generation: dict[str, Any] | None = None


class E5SyntheticData(datasets.GeneratorBasedBuilder):
    """Synthetic embedding-training data in the six kinds of the E5-mistral recipe."""

    BUILDER_CONFIG_CLASS = E5SyntheticConfig
    BUILDER_CONFIGS = [E5SyntheticConfig(name=kind, description=_DESCRIPTIONS[kind]) for kind in KINDS]  # noqa: RUF012
    DEFAULT_CONFIG_NAME = "short_long"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description=self.config.description, features=features_for(self.config.name))

    def _split_generators(self, dl_manager):
        path = self.config.log_path
        if path is None and self.config.data_files:
            path = self.config.data_files["train"][0]
        if path is None:
            raise ValueError(
                "E5SyntheticData needs a generation log: pass log_path='raw/generations.jsonl' "
                "(or data_files={'train': ...}), or log_path plus generation={...} to create it"
            )
        if not os.path.exists(path):
            self._create_log(path)
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"path": path})]

    def _create_log(self, path: str) -> None:
        """Called when the log is missing; `e5mistral.synthetic.generate.E5SyntheticData` runs the generation here."""
        if self.config.generation is None:
            fix = "pass generation={...} to e5mistral.synthetic.E5SyntheticData to create it"
        else:
            fix = "this builder does not generate: pass generation={...} to e5mistral.synthetic.E5SyntheticData"
        raise FileNotFoundError(f"generation log {path} does not exist; {fix}")

    def _generate_examples(self, path):
        for row in dataset_rows(read_generation_log(path), self.config.name):
            yield row["id"], row
