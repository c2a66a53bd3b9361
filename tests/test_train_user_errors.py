"""scripts/train.py meeting a user's mistakes and interruptions: one clear line, no silent wrong result.

Each test is named for the behaviour; most call the script's own ``parse_args``/``main`` in-process
(a fresh process is used where the exit status, the absence of a traceback or a signal matter).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from e5mistral.errors import UserError
from e5mistral.testing import make_tiny_model_folder
from e5mistral.training.data import load_rows, load_training_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train.py"
DEMO = str(ROOT / "configs" / "demo.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def train_script():
    from e5mistral.cli import train

    return train


def rows_file(path: Path, n: int, negatives: bool = True) -> str:
    with path.open("w") as f:
        for i in range(n):
            row = {"query": f"question {i} about item {i}", "positive": f"the answer {i} for item {i}"}
            row["negatives"] = [f"an unrelated note {i}"] if negatives else []
            row["instruction"] = "Given a question, find its answer"
            f.write(json.dumps(row) + "\n")
    return str(path)


def run_main(train_script, argv: list[str]) -> int:
    return train_script.run(*train_script.parse_args(argv))


# ---- item 4: the model path given is the model trained ----


def test_demo_config_trains_the_model_path_given(train_script, tmp_path):
    base = make_tiny_model_folder(tmp_path / "base", seed=3, hidden_size=48, intermediate_size=96)
    out = tmp_path / "out"
    argv = ["--config", DEMO, "--model_name_or_path", str(base), "--output_dir", str(out), "--max_steps", "1"]
    assert run_main(train_script, argv) == 0
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 48  # not the demo's tiny 32
    assert json.loads((out / "training_info.json").read_text())["base_model"] == str(base)
    assert not (out / "tiny-base-model").exists()


# ---- item 5: no full batch ----


def test_no_full_batch_stops_with_the_numbers_and_the_fixes(train_script, tmp_path):
    data = rows_file(tmp_path / "rows.jsonl", 10)
    argv = ["--config", DEMO, "--dataset_name", data, "--eval_split_size", "0", "--output_dir", str(tmp_path / "o")]
    with pytest.raises(UserError, match=r"10 training rows, global batch 32 .*no_duplicates_in_batch.*0 steps"):
        run_main(train_script, argv)
    assert not (tmp_path / "o" / "model.safetensors").exists()  # no untrained model saved as if trained


# ---- items 10 and 11: data errors, early and in one line ----


def test_data_errors_are_reported_before_the_weights_are_loaded(train_script, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(train_script, "load_model_and_tokenizer", no_model)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive": ""}) + "\n")
    with pytest.raises(UserError, match="column 'positive', row 0"):
        run_main(train_script, ["--config", DEMO, "--dataset_name", str(bad), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(UserError, match="eval rows"):
        eval_bad = tmp_path / "eval rows.jsonl"
        eval_bad.write_text("")
        run_main(
            train_script,
            ["--config", DEMO, "--eval_dataset_name", str(eval_bad), "--output_dir", str(tmp_path / "o")],
        )


def test_an_empty_jsonl_file_is_one_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match=r"empty\.jsonl' is empty"):
        load_rows(str(empty))


def test_csv_content_in_a_jsonl_file_is_named_as_not_json(tmp_path):
    csv = tmp_path / "rows.jsonl"
    csv.write_text("query,positive\nwhat is it,a thing\n")
    with pytest.raises(UserError, match=r"rows\.jsonl' is not valid JSON"):
        load_rows(str(csv))


def test_a_missing_local_path_says_no_such_file_not_repo_id(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="no such file or folder"):
        load_rows("./data/nowhere")


def test_a_config_typo_names_the_field_and_its_closest_match(train_script, tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("dataset_name: sample\nlearnig_rate: 1.0e-3\noutput_dir: out\n")
    with pytest.raises(UserError, match=r"unknown fields 'learnig_rate' \(did you mean 'learning_rate'\?\)"):
        train_script.parse_args(["--config", str(config)])


def test_a_model_folder_without_tokenizer_is_named_before_training(train_script, tmp_path):
    base = make_tiny_model_folder(tmp_path / "base")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (base / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match="tokenizer"):
        run_main(train_script, ["--config", DEMO, "--model_name_or_path", str(base), "--output_dir", str(tmp_path / "o")])


def test_a_user_error_exits_2_with_one_line_and_no_traceback(tmp_path):
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", DEMO, "--dataset_name", str(tmp_path / "missing.jsonl")],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 2, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.jsonl" in errors[0] and "no such file" in errors[0]


# ---- items 14 and 15: mixtures and Hub-style folders ----


def test_a_mixture_does_not_depend_on_the_order_of_its_sources(tmp_path):
    plain = rows_file(tmp_path / "plain.jsonl", 12, negatives=False)  # negatives: [] everywhere (list<null>)
    first = load_training_data(f"{plain}=0.5,sample=0.5", seed=0)
    second = load_training_data(f"sample=0.5,{plain}=0.5", seed=0)
    assert len(first) == len(second) == 24
    assert sorted(first["query"]) == sorted(second["query"])
    assert first.features["negatives"] == second.features["negatives"]


def test_a_local_folder_with_hub_style_split_files_loads_as_on_the_hub(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rows_file(flat / "train.jsonl", 5)
    assert len(load_rows(str(flat), "train")) == 5

    from datasets import Dataset

    nested = tmp_path / "nested" / "data" / "qa"
    nested.mkdir(parents=True)
    rows = [{"query": f"q{i}", "positive": f"p{i}"} for i in range(4)]
    Dataset.from_list(rows).to_parquet(str(nested / "train-00000-of-00001.parquet"))
    Dataset.from_list(rows[:2]).to_parquet(str(nested / "test-00000-of-00001.parquet"))
    assert len(load_rows(str(tmp_path / "nested"), "train")) == 4
    assert len(load_rows(str(tmp_path / "nested"), "test")) == 2
    with pytest.raises(UserError, match=r"not 'validation'"):
        load_rows(str(tmp_path / "nested"), "validation")


# ---- item 7: lengths beyond the model's positions ----


def test_max_lengths_beyond_the_model_positions_are_clamped_in_training_and_the_card(train_script, tmp_path, caplog):
    out = tmp_path / "out"
    argv = ["--config", DEMO, "--output_dir", str(out), "--max_steps", "1", "--passage_max_length", "100000"]
    assert run_main(train_script, argv) == 0
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 1024
    assert json.loads((out / "training_args.json").read_text())["passage_max_length"] == 1024  # and so the card
    assert "passage_max_length=100000" in caplog.text and "1024" in caplog.text


# ---- item 12: reruns resume; Ctrl-C saves and says how to resume ----


def test_rerunning_the_same_command_resumes_from_the_last_checkpoint(train_script, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config", DEMO, "--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "2"]
    assert run_main(train_script, [*argv, "--max_steps", "2"]) == 0
    capsys.readouterr()
    assert run_main(train_script, [*argv, "--max_steps", "4"]) == 0
    assert f"Resuming from {out / 'checkpoint-2'} (step 2)" in capsys.readouterr().out
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert run_main(train_script, [*argv, "--max_steps", "2", "--resume_from_checkpoint", "false"]) == 0
    assert "Resuming" not in capsys.readouterr().out  # `false` starts again from step 0


def test_ctrl_c_saves_a_checkpoint_and_prints_the_command_that_resumes(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--config", DEMO, "--output_dir", str(out), "--logging_steps", "1"]
    token = ["--hub_token", "hf_notarealtoken0123456789"]
    process = subprocess.Popen(command + token, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # the first logged training step: training is under way
        if line.startswith("step ") and "loss" in line:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    saved = sorted(out.glob("checkpoint-*"))
    assert len(saved) == 1 and (saved[0] / "model.safetensors").exists()
    assert f"saved {saved[0]}" in stderr and "Resume with the same command" in stderr
    assert "hf_notarealtoken0123456789" not in stderr + stdout  # the token given on the command line
    assert not (out / "model.safetensors").exists()  # an interrupted run does not save a "final" model
    assert "{'" not in stdout  # logs are lines, not dicts of strings

    resumed = subprocess.run(command + ["--max_steps", "12"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from {saved[0]}" in resumed.stdout


# ---- item 16: a help a person can read ----


def test_help_shows_the_projects_options_and_help_all_shows_every_field(tmp_path):
    short = subprocess.run([sys.executable, str(SCRIPT), "--help"], env=ENV, capture_output=True, text=True)
    assert short.returncode == 0
    assert "--temperature" in short.stdout and "--mini_batch_size" in short.stdout and "--config" in short.stdout
    assert "--adam_beta1" not in short.stdout and len(short.stdout.splitlines()) < 250
    full = subprocess.run([sys.executable, str(SCRIPT), "--help-all"], env=ENV, capture_output=True, text=True)
    assert full.returncode == 0 and "--adam_beta1" in full.stdout


@pytest.mark.parametrize(
    "module, script", [("train", "train.py"), ("evaluate", "evaluate.py"), ("mine", "mine_hard_negatives.py")]
)
def test_the_commands_run_as_modules_and_the_scripts_are_their_entry_points(module, script):
    path = ROOT / "scripts" / script
    as_script = subprocess.run([sys.executable, str(path), "--help"], env=ENV, capture_output=True, text=True)
    as_module = subprocess.run(
        [sys.executable, "-m", f"e5mistral.cli.{module}", "--help"], env=ENV, capture_output=True, text=True
    )
    assert as_module.returncode == 0 and "options:" in as_module.stdout
    assert as_module.stdout.split("options:")[1] == as_script.stdout.split("options:")[1]  # the usage line names the file
    assert len(path.read_text().splitlines()) < 20  # the script only calls e5mistral.cli.<module>.main


# ---- item 17: documents cited exist ----


def test_code_and_docstrings_cite_only_documents_the_repository_has():
    import re

    cited = set()
    for folder in ("e5mistral", "scripts", "configs", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yaml", ".sh", ".md", ""):
                cited |= {(m, path) for m in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", path.read_text(errors="ignore"))}
    missing = sorted({f"{name} (in {path.relative_to(ROOT)})" for name, path in cited if not (ROOT / name).exists()})
    assert not missing, missing
    assert {name for name, _ in cited} >= {"README.md"}  # the scan does find citations


def test_a_checkpoint_whose_weights_do_not_fit_is_one_error_line(train_script, tmp_path):
    from e5mistral.testing import make_tiny_family_checkpoint, make_tiny_tokenizer

    base = make_tiny_family_checkpoint("qwen2", tmp_path / "qwen2")  # q/k/v biases
    make_tiny_tokenizer().save_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])  # mislabelled: biases would drop
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"q_proj\.bias") as error:
        run_main(train_script, ["--config", DEMO, "--model_name_or_path", str(base), "--output_dir", str(tmp_path / "o")])
    assert "\n" not in str(error.value)


# ---- item 3: the floors declared are the releases tested ----


def test_declared_dependency_floors_are_met_by_the_tested_environment():
    import configparser
    from importlib.metadata import version

    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = [Requirement(line) for line in config["options"]["install_requires"].split("\n") if line.strip()]
    floors = {r.name: r for r in requirements if any(s.operator == ">=" for s in r.specifier)}
    assert {"torch", "transformers", "datasets", "peft", "trl", "accelerate"} <= set(floors)
    for name, requirement in floors.items():
        assert requirement.specifier.contains(version(name), prereleases=True), (name, version(name), requirement)
    # the floor of transformers has what the suite uses (activation_checkpointing arrived in a later 5.x)
    from transformers import TrainingArguments

    assert "activation_checkpointing" in TrainingArguments.__dataclass_fields__
