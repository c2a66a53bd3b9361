"""Turn a generation log into a Hub-ready dataset folder, and push it.

The folder `DIR` ends as::

    DIR/README.md                          card rendered from dataset_card.md, with `configs:`
    DIR/data/<kind>/train-00000-of-00001.parquet   one config per kind that has rows
    DIR/raw/generations.jsonl              the raw generation log (already there)
    DIR/raw/run.json                       the arguments that shaped the plan
    DIR/recipe/e5mistral_synthetic.py      the self-contained datasets builder

`load_dataset(DIR, "short_long")` then reads the Parquet files through the README's `configs:`
block (no loading script is run). The builder sits in a subfolder so that `datasets` never
mistakes it for a loading script of the repository.

Example:
    >>> stats = export_dataset("out")  # doctest: +SKIP
    >>> push_to_hub("out", "me/e5-synthetic")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..hub.publish import push_folder
from .builder import KINDS, E5SyntheticData, read_generation_log
from .summary import summarize

__all__ = ["BUILDER_RELPATH", "DEFAULT_CARD_TEMPLATE", "LOG_RELPATH", "export_dataset", "push_to_hub", "render_card"]

LOG_RELPATH = "raw/generations.jsonl"
BUILDER_RELPATH = "recipe/e5mistral_synthetic.py"
# Shipped inside the package (the repository root's dataset_card.md links to it), so installs have it.
DEFAULT_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "dataset_card.md"


def _hub_language(code: str) -> str:
    return code.split("_")[0]  # "zh_hant" -> "zh", "hi_rom" -> "hi": Hub metadata wants ISO codes


def render_card(
    stats: dict[str, Any],
    *,
    template_path: str | os.PathLike | None = None,
    pretty_name: str = "E5-mistral synthetic embedding data",
    repo_id: str | None = None,
    generation_command: str | None = None,
):
    """Render the dataset card (a `huggingface_hub.DatasetCard`) from the Jinja template, with
    the YAML `configs:` block and the statistics of :func:`~e5mistral.synthetic.summary.summarize`.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    kinds = list(stats["examples"])
    languages = sorted({_hub_language(c) for per in stats["examples_by_language"].values() for c in per})
    total = sum(stats["examples"].values())
    size = (
        "n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else "100K<n<1M"
    )
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        language=languages,
        multilinguality="multilingual" if len(languages) > 1 else "monolingual",
        size_categories=[size],
        task_categories=["sentence-similarity", "text-retrieval", "text-classification"],
        tags=["synthetic", "embeddings", "e5-mistral"],
        configs=[
            {"config_name": kind, "data_files": [{"split": "train", "path": f"data/{kind}/*.parquet"}]}
            for kind in kinds
        ],
    )
    template = Path(template_path) if template_path else DEFAULT_CARD_TEMPLATE
    if not template.exists():
        raise FileNotFoundError(f"dataset card template {template} not found; pass template_path=")
    return DatasetCard.from_template(
        card_data,
        template_path=str(template),
        stats=stats,
        total_examples=total,
        repo_id=repo_id,
        generation_command=generation_command,
        builder_path=BUILDER_RELPATH,
        log_path=LOG_RELPATH,
        created=datetime.date.today().isoformat(),
    )


def export_dataset(
    output_dir: str | os.PathLike,
    *,
    kinds: Sequence[str] = KINDS,
    template_path: str | os.PathLike | None = None,
    repo_id: str | None = None,
    generation_command: str | None = None,
    decontaminate_against: Sequence[str] | None = None,
    decontamination_ngram: int = 13,
) -> dict[str, Any]:
    """Build every config with rows from `output_dir/raw/generations.jsonl` through the builder,
    write Parquet, the builder file and the README card. Returns the statistics.

    With `decontaminate_against` (evaluation data: BEIR folders, data files; see
    :mod:`e5mistral.decontamination`), rows whose example texts share a word n-gram with it are
    left out of the Parquet files: ``stats["examples"]`` counts the rows written, and
    ``stats["decontamination"]`` says how many were dropped, per source and per kind (a kind left
    without rows is not exported). The raw log and the builder keep every example.

    Example:
        >>> export_dataset("out")["examples"]  # doctest: +SKIP
        {'short_long': 120, 'sts': 98}
        >>> stats = export_dataset("out", decontaminate_against=["data/scifact"])  # doctest: +SKIP
        >>> stats["decontamination"]["dropped"]  # doctest: +SKIP
        2
    """
    output_dir = Path(output_dir)
    log_path = output_dir / LOG_RELPATH
    if not log_path.exists():
        raise FileNotFoundError(f"{log_path} does not exist; run scripts/generate_data.py --output {output_dir} first")
    index = None
    if decontaminate_against:
        from ..decontamination import NgramIndex

        index = NgramIndex.build(decontaminate_against, n=decontamination_ngram)  # before the export touches data/
    stats = summarize(read_generation_log(log_path), kinds)
    data_dir = output_dir / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)  # stale shards of an earlier export must not survive
    with tempfile.TemporaryDirectory() as cache_dir:
        for kind in stats["examples"]:
            builder = E5SyntheticData(config_name=kind, log_path=str(log_path), cache_dir=cache_dir)
            builder.download_and_prepare()
            dataset = builder.as_dataset("train")
            if index is not None:
                dataset = _decontaminate_kind(stats, kind, dataset, index)
                if len(dataset) == 0:
                    continue
            (data_dir / kind).mkdir(parents=True, exist_ok=True)
            dataset.to_parquet(str(data_dir / kind / "train-00000-of-00001.parquet"))
    for kind in [k for k, n in stats["examples"].items() if n == 0 and index is not None]:
        del stats["examples"][kind], stats["examples_by_language"][kind]  # no config without rows
    builder_target = output_dir / BUILDER_RELPATH
    builder_target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("builder.py"), builder_target)
    card = render_card(stats, template_path=template_path, repo_id=repo_id, generation_command=generation_command)
    card.save(str(output_dir / "README.md"))
    return stats


def _decontaminate_kind(stats: dict[str, Any], kind: str, dataset, index):
    """`dataset` (one kind's rows) without the rows overlapping `index`; `stats` updated to what is kept."""
    from collections import Counter

    from ..decontamination import decontaminate
    from .builder import OUTPUT_FIELDS

    kept, report = decontaminate(dataset, index, OUTPUT_FIELDS[kind])
    record = stats.setdefault(
        "decontamination",
        {"against": list(index.sources), "ngram": index.n, "rows": 0, "dropped": 0,
         "by_source": dict.fromkeys(index.sources, 0), "dropped_by_kind": {}},
    )  # fmt: skip
    record["rows"] += report.rows
    record["dropped"] += report.dropped
    for source, n in report.by_source.items():
        record["by_source"][source] += n
    record["dropped_by_kind"][kind] = report.dropped
    stats["examples"][kind] = len(kept)
    languages = Counter(kept["language"])
    stats["examples_by_language"][kind] = dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0])))
    return kept


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload synthetic embedding data",
) -> str:
    """Create the dataset repo (if needed) and upload the exported folder; returns the commit URL.

    The upload is :func:`e5mistral.hub.push_folder`'s, with its error contract: the token comes
    from `token`, else `HF_TOKEN`, else the saved `hf auth login`; it is only passed to `HfApi`,
    never written to a file, and cut out of the message of an HTTP error (whose server text could
    echo it). Wrap the call in :func:`e5mistral.hub.hub_errors_as_user_errors` for one-line errors.

    Example:
        >>> push_to_hub("out", "me/e5-synthetic", private=True)  # doctest: +SKIP
        'https://huggingface.co/datasets/me/e5-synthetic/commit/...'
    """
    output_dir = Path(output_dir)
    if not (output_dir / "README.md").exists():
        raise FileNotFoundError(f"{output_dir}/README.md missing; run export_dataset({str(output_dir)!r}) first")
    return push_folder(
        output_dir, repo_id, "dataset", private=private, token=token, commit_message=commit_message
    )
