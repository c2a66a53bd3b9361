"""The command-line scripts as a user runs them, when things go wrong.

- scripts/generate_data.py: a run without one valid example fails naming the failure reasons
  (and exports nothing); a kind without a valid example is warned about in the summary; Ctrl-C
  prints one line (what is logged, the command that resumes) and the printed command resumes.
- scripts/push_to_hub.py: no token, the Hub unreachable, a non-empty --local-dir and missing
  inputs are one `error:` line each, without a traceback.
- scripts/evaluate.py: an MTEB task that fails (offline) keeps the BEIR results of the same run
  on disk, reports the failure and exits non-zero; unknown tasks and models fail before any work.

The LLM server is `e5mistral.testing.ScriptedServer` (loopback, in a thread); commands run either
through `main(argv)` (wrapped in `run_command` where the exit status matters) or in a subprocess
when the point is what the terminal shows.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from e5mistral.cli import generate as generate_command
from e5mistral.cli import push as push_command
from e5mistral.errors import UserError, resume_command, run_command
from e5mistral.synthetic.builder import read_generation_log
from e5mistral.synthetic.plan import request_seed
from e5mistral.cli import evaluate
from e5mistral.testing import ScriptedServer, always_valid, valid_answer

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def subprocess_env(**extra: str) -> dict:
    """The environment of a command a user runs here: offline, no tokens, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")}
    return {**env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **extra}


def generation_args(url: str, out: Path, *, kinds: str, n: int, concurrency: int = 2) -> list[str]:
    return [
        "--base-url", url, "--model", "scripted", "--kinds", kinds, "--examples-per-kind", str(n),
        "--examples-per-brainstorm", str(n), "--languages", "en", "--seed", "5", "--concurrency", str(concurrency),
        "--max-reasks", "0", "--timeout", "5", "--max-retries", "1", "--backoff-base", "0.01", "--no-progress",
        "--output", str(out),
    ]  # fmt: skip


def is_sts(body: dict) -> bool:
    return '"S1"' in body["messages"][0]["content"]


# ------------------------------------------------------------------------------------------
# scripts/generate_data.py
# ------------------------------------------------------------------------------------------
def test_generation_without_a_valid_example_fails_naming_the_reasons_and_exports_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    with ScriptedServer(lambda body, arrival: ("content", "Sorry, I cannot write JSON.")) as server:
        code = generate_command.main(generation_args(server.url, out, kinds="short_long,sts", n=3))
    assert code == 1
    captured = capsys.readouterr()
    error = [line for line in captured.err.splitlines() if line.startswith("error:")]
    # 1 short_long brainstorm (invalid) -> 3 examples without a task pool; 3 sts examples invalid
    assert error == [
        "error: no valid example was generated: 7 requests logged, failures: invalid_json 4, no_task_pool 3; "
        f"nothing was exported. The 'failure' field of each record in {out / 'raw' / 'generations.jsonl'} says why; "
        "fix the cause (server, --model, --json-mode, --max-tokens), then run again with a new --output folder "
        "(failed requests are final in this log)"
    ]
    assert "Traceback" not in captured.err
    assert "invalid_json" in captured.out  # the summary was printed too
    assert not (out / "README.md").exists() and not (out / "data").exists()
    assert len(read_generation_log(out / "raw" / "generations.jsonl")) == 7


def test_kind_without_a_valid_example_is_warned_in_the_summary(tmp_path, capsys):
    def behave(body, arrival):
        return ("content", "no JSON for similarity") if is_sts(body) else always_valid(body, arrival)

    out = tmp_path / "out"
    with ScriptedServer(behave) as server:
        code = generate_command.main(generation_args(server.url, out, kinds="short_long,sts", n=3))
    assert code == 0  # short_long has examples: the dataset is exported, without sts
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "WARNING: kind sts has no valid example: 3 requests logged, failures: invalid_json 3"
    assert not [line for line in printed if "WARNING" in line and "short_long" in line]
    assert (out / "data" / "short_long").is_dir() and not (out / "data" / "sts").exists()


def test_resume_command_redacts_credentials_of_the_base_url():
    command = resume_command(["--base-url", "http://me:PLANTED-pw-123@host:8000/v1", "--output", "o"], "g.py")
    assert "PLANTED" not in command
    assert shlex.split(command) == [sys.executable, "g.py", "--base-url", "http://***@host:8000/v1", "--output", "o"]


def test_ctrl_c_prints_one_line_with_the_logged_count_and_the_command_that_resumes_it(tmp_path):
    out = tmp_path / "out"
    log_path = out / "raw" / "generations.jsonl"
    with ScriptedServer(always_valid, delay=0.4) as server:
        argv = generation_args(server.url, out, kinds="sts", n=8, concurrency=1)
        process = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "generate_data.py"), *argv],
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not (log_path.exists() and log_path.read_bytes().count(b"\n") >= 2):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the generator wrote too little"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        logged = len(read_generation_log(log_path))
        assert 2 <= logged < 8  # interrupted mid-run
        last = err.strip().splitlines()[-1]
        prefix = f"interrupted: {logged} of 8 requests are logged in {log_path}; resume with: "
        assert last.startswith(prefix), err
        command = shlex.split(last.removeprefix(prefix))
        assert command == [sys.executable, str(SCRIPTS / "generate_data.py"), *argv]

        resumed = subprocess.run(
            command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300
        )
    assert resumed.returncode == 0, resumed.stderr
    ids = [f"5-sts-example-{i:06d}" for i in range(8)]
    assert sorted(r["id"] for r in read_generation_log(log_path)) == ids
    assert log_path.read_bytes().count(b"\n") == 8  # nothing asked twice
    rows = pq.read_table(out / "data" / "sts" / "train-00000-of-00001.parquet").to_pylist()
    assert [row["S1"] for row in rows] == [valid_answer(request_seed(i))["S1"] for i in ids]


# ------------------------------------------------------------------------------------------
# scripts/push_to_hub.py
# ------------------------------------------------------------------------------------------
def run_push(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "push_to_hub.py"), *args],
        cwd=REPO,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_push_without_a_token_is_one_line_naming_the_fix(tiny_folder, tmp_path):
    result = run_push(["model", "--model", str(tiny_folder), "--repo-id", "me/tiny"], HF_HOME=str(tmp_path / "hf"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: no Hugging Face token to upload with: set HF_TOKEN or run `hf auth login`, "
        "or pass --local-dir DIR to write the folder without uploading"
    ]


def test_push_with_the_hub_unreachable_is_one_line_naming_the_fix(tiny_folder, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "hf_PLANTEDunreachableToken123"
    result = run_push(
        ["model", "--model", str(tiny_folder), "--repo-id", "me/tiny"],
        HF_TOKEN=token,
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_HOME=str(tmp_path / "hf"),
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and token not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"error: cannot reach the Hugging Face Hub at http://127\.0\.0\.1:{port} to upload me/tiny "
        r"\(.*Connection refused\); check the network \(and HF_ENDPOINT\), "
        r"or pass --local-dir DIR to write the folder without uploading",
        last,
    ), last


def test_push_offline_says_hf_hub_offline_is_set(tiny_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_PLANTEDofflineToken123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # conftest sets it before the import
    with pytest.raises(UserError) as info:
        push_command.main(["model", "--model", str(tiny_folder), "--repo-id", "me/tiny"])
    assert str(info.value) == (
        "cannot upload me/tiny: HF_HUB_OFFLINE is set, so the Hub is not contacted; unset it, "
        "or pass --local-dir DIR to write the folder without uploading"
    )


def make_dataset_folder(path: Path) -> Path:
    (path / "data" / "sts").mkdir(parents=True)
    (path / "README.md").write_text("card")
    (path / "data" / "sts" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("non_empty_local_dir", r"--local-dir \S+/full is not an empty folder; choose a new or empty folder"),
        ("missing_model", r"--model \S+/nowhere does not exist; pass the saved model folder"),
        ("missing_data", r"--data \S+/nowhere does not exist; pass the --output folder of scripts/generate_data.py"),
        ("missing_results", r"--results \S+/results.json is not a file; give the path of an existing file"),
    ],
)
def test_push_input_mistakes_are_one_error_line_before_any_work(case, message, tiny_folder, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    data = make_dataset_folder(tmp_path / "data")
    argv = {
        "non_empty_local_dir": ["dataset", "--data", str(data), "--local-dir", str(tmp_path / "full")],
        "missing_model": ["model", "--model", str(tmp_path / "nowhere"), "--local-dir", str(tmp_path / "new")],
        "missing_data": ["dataset", "--data", str(tmp_path / "nowhere"), "--local-dir", str(tmp_path / "new")],
        "missing_results": ["model", "--model", str(tiny_folder), "--results", str(tmp_path / "results.json"),
                            "--local-dir", str(tmp_path / "new")],
    }[case]  # fmt: skip
    assert run_command(lambda: push_command.main([*argv, "--repo-id", "me/x"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "new").exists()  # nothing was staged
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["old.txt"]


# ------------------------------------------------------------------------------------------
# scripts/evaluate.py
# ------------------------------------------------------------------------------------------
def write_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    docs = {f"d{i}": f"document number {i} about topic {i % 3}" for i in range(9)}
    queries = {f"q{i}": f"topic {i}" for i in range(3)}
    lines = lambda rows: "".join(json.dumps(row) + "\n" for row in rows)  # noqa: E731
    (folder / "corpus.jsonl").write_text(lines({"_id": k, "title": "", "text": v} for k, v in docs.items()))
    (folder / "queries.jsonl").write_text(lines({"_id": k, "text": v} for k, v in queries.items()))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{j}\t1\n" for i in range(3) for j in range(i, 9, 3))
    )
    return folder


def test_failed_mteb_task_keeps_the_beir_results_reports_it_and_exits_non_zero(tiny_folder, tmp_path, capsys):
    from e5mistral import E5Embedder
    from e5mistral.evaluation.retrieval import evaluate_beir
    from e5mistral.instructions import get_instruction

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # so STS12's data cannot be downloaded
    folder = write_beir(tmp_path / "toyset")
    out = tmp_path / "results.json"
    argv = ["--model", str(tiny_folder), "--beir", str(folder), "--mteb", "STS12", "--output", str(out)]
    assert run_command(lambda: evaluate.run(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("failed: ")] == [
        next(line for line in err if line.startswith("failed: mteb STS12: ConnectionError: "))
    ]
    assert err[-1].startswith(
        f"error: 1 of 2 evaluations failed (listed above); the results of the other 1 are in {out}."
    )
    assert "Traceback" not in "\n".join(err)

    saved = json.loads(out.read_text())
    assert set(saved["beir"]) == {"toyset"} and saved["mteb"] == {}
    assert saved["failed"]["mteb STS12"].startswith("ConnectionError: ")
    direct = evaluate_beir(E5Embedder.from_pretrained(tiny_folder), folder, get_instruction("web_search"))
    assert saved["beir"]["toyset"]["metrics"] == pytest.approx(direct.metrics, rel=1e-6)
    assert direct.metrics["ndcg@10"] > 0  # a real number was kept, not an empty placeholder


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mteb", "NoSuchTaskXYZ"], r"--mteb: .*'NoSuchTaskXYZ' not found"),
        (["--model", "no-such-model-folder", "--mteb", "STS12"], r"--model no-such-model-folder is not a folder here"),
        ([], r"nothing to evaluate: give at least one --beir DIR or --mteb TASK"),
    ],
)
def test_evaluate_argument_mistakes_are_one_error_line_before_any_work(argv, message, tiny_folder, tmp_path, capsys):
    out = tmp_path / "results.json"
    model = [] if "--model" in argv else ["--model", str(tiny_folder)]
    full = [*model, *argv, "--output", str(out)]
    assert run_command(lambda: evaluate.run(full)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, err[-1]) and err[-1].startswith("error: "), err
    assert not out.exists()


def test_generation_with_push_to_hub_and_no_token_fails_before_any_request(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))  # no `hf auth login`
    out = tmp_path / "out"
    with ScriptedServer(always_valid) as server:
        argv = [*generation_args(server.url, out, kinds="sts", n=2), "--push-to-hub", "me/data"]
        assert run_command(lambda: generate_command.main(argv)) == 2
        assert not server.arrivals  # not one request was made
    assert capsys.readouterr().err.strip() == (
        "error: no Hugging Face token to upload with: set HF_TOKEN or run `hf auth login`, or leave out "
        "--push-to-hub and push the folder later with scripts/push_to_hub.py dataset"
    )
    assert not out.exists()


def test_bitext_with_a_single_language_is_refused_before_any_request(tmp_path):
    from e5mistral.synthetic.plan import GenerationConfig

    with pytest.raises(ValueError, match="bitext pairs two languages"):
        GenerationConfig(kinds=("sts", "bitext"), examples_per_kind=2, languages={"en": 1.0})
    GenerationConfig(kinds=("sts",), examples_per_kind=2, languages={"en": 1.0})  # one language is fine without bitext
