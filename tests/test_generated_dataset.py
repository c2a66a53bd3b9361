"""The folder `scripts/generate_data.py` writes trains as `--dataset_name FOLDER`.

One generation against the loopback `ScriptedServer` (valid JSON for every kind) feeds every test:
the folder's Parquet per kind, loaded through `datasets` and converted by the project's own mapping
(`to_training_row`), gives exactly the rows `training_rows_from_log` gives on the same log; a
comma list in `dataset_config` picks kinds; and `scripts/train.py` trains on the folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from e5mistral.cli import generate as generate_command
from e5mistral.errors import UserError
from e5mistral.synthetic import KINDS, training_rows_from_log
from e5mistral.testing import ScriptedServer
from e5mistral.training.data import SCHEMA_COLUMNS, SCHEMA_FEATURES, load_training_data

REPO = Path(__file__).resolve().parents[1]
EXAMPLES_PER_KIND = 8  # 48 rows: one full demo batch of 32 after the demo's 20% hold-out


def _row_key(row: dict) -> tuple:
    return tuple(tuple(row[c]) if c == "negatives" else row[c] for c in SCHEMA_COLUMNS)


def _generate(output: Path, kinds=KINDS) -> None:
    with ScriptedServer() as server:
        argv = [
            "--base-url", server.url, "--model", "scripted", "--kinds", ",".join(kinds),
            "--examples-per-kind", str(EXAMPLES_PER_KIND), "--languages", "en:3,de,fr", "--concurrency", "4",
            "--seed", "0", "--timeout", "5", "--backoff-base", "0.01", "--no-progress", "--output", str(output),
        ]  # fmt: skip
        assert generate_command.main(argv) == 0


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("generated") / "synthetic-data"
    _generate(folder)
    assert sorted(p.name for p in (folder / "data").iterdir()) == sorted(KINDS)
    return folder


def test_folder_loads_every_kind_with_the_projects_mapping(generated):
    rows = load_training_data(str(generated))
    expected = training_rows_from_log(generated / "raw" / "generations.jsonl")
    assert len(expected) == len(KINDS) * EXAMPLES_PER_KIND
    assert rows.column_names == list(SCHEMA_COLUMNS)
    assert rows.features == SCHEMA_FEATURES
    assert len(rows) == len(expected)
    assert {_row_key(r) for r in rows} == {_row_key(r) for r in expected}
    assert Counter(rows["task"]) == dict.fromkeys(KINDS, EXAMPLES_PER_KIND)


def test_dataset_config_picks_kinds_by_name(generated):
    rows = load_training_data(str(generated), config="short_long, sts")
    expected = training_rows_from_log(generated / "raw" / "generations.jsonl", kinds=("short_long", "sts"))
    assert {_row_key(r) for r in rows} == {_row_key(r) for r in expected}
    assert set(rows["task"]) == {"short_long", "sts"}
    one = load_training_data(str(generated), config="long_short")
    assert set(one["task"]) == {"long_short"} and len(one) == EXAMPLES_PER_KIND
    assert one["negatives"][0] and all(len(n) == 1 for n in one["negatives"])  # the misleading label


def test_hub_copy_loads_the_same_way(generated, monkeypatch):
    """A Hub id goes through the same calls (`get_dataset_config_names`, `load_dataset(repo, kind)`);
    here the Hub is the local folder, as the repo `push_to_hub.py dataset` uploads holds the same files."""
    import datasets

    real_names, real_load = datasets.get_dataset_config_names, datasets.load_dataset
    redirect = {"me/e5-synthetic": str(generated)}
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda path, *a, **k: real_names(redirect.get(path, path)))
    monkeypatch.setattr(datasets, "load_dataset", lambda path, *a, **k: real_load(redirect.get(path, path), *a, **k))
    from_hub = load_training_data("me/e5-synthetic", config="bitext")
    assert {_row_key(r) for r in from_hub} == {_row_key(r) for r in load_training_data(str(generated), config="bitext")}


def test_mixture_with_a_generated_folder(generated):
    rows = load_training_data(f"{generated}=1,sample=1")
    assert len(rows) == 2 * len(KINDS) * EXAMPLES_PER_KIND  # as large as the smaller source allows
    assert rows.features == SCHEMA_FEATURES


def test_generated_folder_mistakes_are_one_line(generated, tmp_path):
    with pytest.raises(UserError, match=r"has the kinds .*not stss; pick some of them"):
        load_training_data(str(generated), config="short_long,stss")
    with pytest.raises(UserError, match=r"no split 'validation'.*only 'train'"):
        load_training_data(str(generated), split="validation")
    # A log without the export (--no-export): say how to export, not "column 'query' is missing".
    log_only = tmp_path / "log-only"
    (log_only / "raw").mkdir(parents=True)
    shutil.copyfile(generated / "raw" / "generations.jsonl", log_only / "raw" / "generations.jsonl")
    with pytest.raises(UserError, match=r"generation log .* but no exported data/; rerun .* without --no-export"):
        load_training_data(str(log_only))
    # Kind-named configurations with neither the kind's fields nor training columns.
    broken = tmp_path / "broken"
    shutil.copytree(generated, broken, ignore=shutil.ignore_patterns("raw", "recipe"))
    import datasets

    sts = datasets.load_dataset("parquet", data_files=str(next((broken / "data" / "sts").glob("*.parquet"))))["train"]
    sts.remove_columns(["S2"]).to_parquet(str(next((broken / "data" / "sts").glob("*.parquet"))))
    with pytest.raises(UserError, match=r"\(sts\): a sts configuration needs the columns S2"):
        load_training_data(str(broken), config="sts")


def test_kind_named_configs_of_training_rows_load_as_they_are(generated, tmp_path):
    """A Hub-style folder whose configs happen to be kind names but hold training rows already."""
    folder = tmp_path / "rows-by-kind"
    shutil.copytree(generated, folder, ignore=shutil.ignore_patterns("raw", "recipe", "data"))
    for kind in KINDS:
        rows = load_training_data(str(generated), config=kind)
        (folder / "data" / kind).mkdir(parents=True)
        rows.to_parquet(str(folder / "data" / kind / "train-00000-of-00001.parquet"))
    assert {_row_key(r) for r in load_training_data(str(folder))} == {
        _row_key(r) for r in load_training_data(str(generated))
    }


def test_train_script_trains_on_the_generated_folder(generated, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [
        sys.executable, "scripts/train.py", "--config", "configs/demo.yaml", "--dataset_name", str(generated),
        "--max_steps", "2", "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("Training rows:"))
    assert all(kind in line for kind in KINDS), line
    assert (tmp_path / "run" / "model.safetensors").exists() or any((tmp_path / "run").glob("*.safetensors"))
