"""A planted Hub token never reaches a log, a saved file (checkpoints, the final folder, its card),
a staged Hub folder or a push error, whether it came as --hub_token or as HF_TOKEN."""

from __future__ import annotations

import logging
import pickle
import traceback
from pathlib import Path

import pytest

from e5mistral.training.arguments import E5TrainingArguments

PLANTED_ARG = "hf_PlantedArgToken1234567890abcd"
PLANTED_ENV = "hf_PlantedEnvToken0987654321wxyz"


def _leaks(root: Path) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.relative_to(root)}: {t}" for t in (PLANTED_ARG, PLANTED_ENV) if t.encode() in data]
    return found


def test_arguments_pickle_without_the_hub_token_and_keep_it_in_memory(tmp_path):
    args = E5TrainingArguments(str(tmp_path), hub_token=PLANTED_ARG, report_to="none")
    assert PLANTED_ARG.encode() not in pickle.dumps(args) and PLANTED_ARG not in args.to_json_string()
    assert PLANTED_ARG not in str(args) and args.hub_token == PLANTED_ARG
    assert pickle.loads(pickle.dumps(args)).hub_token is None


def test_training_run_never_writes_or_prints_a_planted_hub_token(tmp_path, monkeypatch, capfd, caplog):
    from e5mistral.hub import export_model_folder

    monkeypatch.setenv("HF_TOKEN", PLANTED_ENV)
    out = tmp_path / "run"
    from e5mistral.cli import train as script
    parsed = script.make_parser().parse_args_and_config(
        args=[
            *("--dataset_name", "sample", "--max_train_rows", "24", "--eval_split_size", "8"),
            *("--tiny_model", "true", "--use_peft", "true", "--keep_adapter", "true", "--lora_r", "4"),
            *("--per_device_train_batch_size", "8", "--mini_batch_size", "4", "--max_steps", "2"),
            *("--query_max_length", "32", "--passage_max_length", "48", "--per_device_eval_batch_size", "16"),
            *("--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", "--report_to", "none"),
            *("--hub_token", PLANTED_ARG, "--hub_model_id", "me/e5-test", "--output_dir", str(out)),
            *("--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--use_cpu", "true"),
        ]
    )
    assert parsed[1].hub_token == PLANTED_ARG
    with caplog.at_level(logging.INFO):
        script.run(*parsed)
    stage = export_model_folder(out, tmp_path / "stage", repo_id="me/e5-test")

    printed = capfd.readouterr()
    written = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert {"training_args.json", "trainer_state.json", "README.md", "adapter/training_args.bin"} <= set(written)
    assert any(p.startswith("checkpoint-1/") and p.endswith("training_args.bin") for p in written)
    assert _leaks(out) == [] and _leaks(stage) == []
    for text in (printed.out, printed.err, caplog.text):
        assert PLANTED_ARG not in text and PLANTED_ENV not in text


class _FailingApi:
    """An HfApi whose calls fail with a message that quotes the token, as a careless proxy might."""

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, *args, **kwargs):
        raise OSError(f"403 Forbidden: header 'Authorization: Bearer {self.token}' rejected for token {self.token}")


@pytest.mark.parametrize("via", ["argument", "env"])
def test_push_errors_never_show_the_token(tmp_path, monkeypatch, via):
    import huggingface_hub

    from e5mistral.hub import push_folder

    monkeypatch.setattr(huggingface_hub, "HfApi", _FailingApi)
    monkeypatch.setenv("HF_TOKEN", PLANTED_ENV)
    token = PLANTED_ARG if via == "argument" else None
    with pytest.raises(RuntimeError, match=r"pushing .* to model repo me/e5 failed: 403 Forbidden") as err:
        push_folder(tmp_path, "me/e5", "model", token=token)
    shown = "".join(traceback.format_exception(err.value))
    assert PLANTED_ARG not in shown and PLANTED_ENV not in shown and "***" in shown

    class _OtherFailure(_FailingApi):
        def create_repo(self, *args, **kwargs):
            raise ConnectionError("Hub unreachable")

    monkeypatch.setattr(huggingface_hub, "HfApi", _OtherFailure)
    with pytest.raises(ConnectionError, match="Hub unreachable"):  # nothing to mask: the error is left as it is
        push_folder(tmp_path, "me/e5", "model", token=token)
