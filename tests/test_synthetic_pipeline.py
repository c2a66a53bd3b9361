"""End-to-end checks of the synthetic-data pipeline against a real OpenAI-compatible HTTP server.

The server (`ScriptedServer`, http.server on 127.0.0.1 in a thread) answers chat completions
with scripted behaviours: valid JSON, fenced JSON, prose around JSON, invalid JSON, off-schema
JSON, 429 with Retry-After, 500, a hang past the client timeout. Every request must end as an
example or a recorded failure with the right reason; a generator killed with SIGKILL and
restarted must end with exactly the dataset of an uninterrupted run; the exported folder must
load with `load_dataset` in a fresh process with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from e5mistral.cli import generate as generate_command
from e5mistral.synthetic.builder import KINDS, OUTPUT_FIELDS, dataset_rows, read_generation_log
from e5mistral.synthetic.generate import run_generation
from e5mistral.synthetic.languages import parse_language_weights
from e5mistral.synthetic.llm import EndpointPool, FatalLLMError
from e5mistral.synthetic.plan import GenerationConfig, plan_requests, request_seed
from e5mistral.synthetic.validation import to_training_row
from e5mistral.testing import ScriptedServer, valid_answer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "generate_data.py"


# ------------------------------------------------------------------------------------------
# A real OpenAI-compatible server with scripted answers
# ------------------------------------------------------------------------------------------
def expected_output(kind: str, seed: int) -> dict:
    answer = valid_answer(seed)
    return {field: answer[field] for field in OUTPUT_FIELDS[kind]}


def is_brainstorm(body: dict) -> bool:
    return '"tasks"' in body["messages"][0]["content"]


# ------------------------------------------------------------------------------------------
# Every request ends as an example or a recorded failure
# ------------------------------------------------------------------------------------------
def _answer(seed: int, style: str) -> tuple:
    text = json.dumps(valid_answer(seed), ensure_ascii=False)
    if style == "fenced":
        return ("content", f"Here is the example.\n```json\n{text}\n```\nHope it helps.")
    if style == "prose":
        return ("content", f"Sure! The JSON you asked for is {text} and nothing more.")
    return ("content", text)


# (script: one action per arrival, the last one repeating; expected outcome with
#  max_reasks=1 and max_retries=2)
SCRIPTS = [
    (["valid"], "ok"),
    (["fenced"], "ok"),
    (["prose"], "ok"),
    (["invalid", "valid"], "ok"),
    (["invalid"], "invalid_json"),
    (["offschema"], "missing_field"),
    (["429", "valid"], "ok"),
    (["500", "valid"], "ok"),
    (["500"], "http_500"),
    (["hang", "valid"], "ok"),
    (["hang"], "timeout"),
    (["html", "valid"], "ok"),
]


class FaultyBehaviour:
    def __init__(self):
        self.script_of_seed: dict[int, int] = {}

    def __call__(self, body: dict, arrival: int) -> tuple:
        seed = body["seed"]
        if is_brainstorm(body):
            return _answer(seed, "valid")
        if seed not in self.script_of_seed:  # the k-th new request gets script k (mod len)
            self.script_of_seed[seed] = len(self.script_of_seed) % len(SCRIPTS)
        steps = SCRIPTS[self.script_of_seed[seed]][0]
        step = steps[min(arrival, len(steps) - 1)]
        if step in ("valid", "fenced", "prose"):
            return _answer(seed, step)
        if step == "invalid":
            return ("content", '{"user_query": "unterminated, "S1": ')
        if step == "offschema":
            return ("content", json.dumps({"question": "what?", "answer": "that"}))
        if step == "429":
            return ("status", 429, {"Retry-After": "1"})
        if step == "500":
            return ("status", 500, {})
        if step == "html":
            return ("html",)
        return ("hang",)


def test_every_request_ends_as_example_or_recorded_failure(tmp_path):
    behaviour = FaultyBehaviour()
    config = GenerationConfig(
        kinds=("short_long", "long_short", "sts", "bitext"),
        examples_per_kind=6,
        seed=7,
        languages=parse_language_weights("en:3,de,fr,zh"),
        examples_per_brainstorm=10,
    )
    log_path = tmp_path / "raw" / "generations.jsonl"
    with ScriptedServer(behaviour) as server:
        pool = EndpointPool([server.url], "scripted", timeout=0.5, max_retries=2, backoff_base=0.01, backoff_max=0.05)
        summary = asyncio.run(run_generation(config, pool, log_path, concurrency=8, max_reasks=1, progress=False))
        arrivals = {seed: list(times) for seed, times in server.arrivals.items()}
        usage = dict(server.usage)

    brainstorms, examples = plan_requests(config)
    records = {r["id"]: r for r in read_generation_log(log_path)}
    assert sorted(records) == sorted(r.id for r in brainstorms + examples)  # nothing lost, nothing twice
    assert len(log_path.read_text().splitlines()) == len(records)
    assert len(behaviour.script_of_seed) == len(examples) >= 2 * len(SCRIPTS)  # every script used

    for request in examples:
        record = records[request.id]
        seed = request_seed(request.id)
        steps, expected = SCRIPTS[behaviour.script_of_seed[seed]]
        if expected == "ok":
            assert record["status"] == "ok", (steps, record["failure"])
            assert record["output"] == expected_output(request.kind, seed), steps
        else:
            assert record["status"] == "failed", steps
            assert record["failure"]["reason"] == expected, (steps, record["failure"])
        if steps[0] == "429":  # the retry waited for Retry-After: 1
            assert arrivals[seed][1][0] - arrivals[seed][0][0] >= 1.0
        if steps == ["500"] or steps == ["hang"]:
            assert len(arrivals[seed]) == 3  # 1 try + max_retries
        if steps == ["invalid"]:
            assert record["attempts"] == 2  # 1 ask + max_reasks

    n_failed = sum(1 for r in records.values() if r["status"] == "failed")
    assert sum(summary["failures_by_reason"].values()) == n_failed > 0
    assert summary["prompt_tokens"] == usage["prompt_tokens"] > 0
    assert summary["completion_tokens"] == usage["completion_tokens"] > 0
    n_ok = {
        k: sum(1 for r in records.values() if r["kind"] == k and r["step"] == "example" and r["status"] == "ok")
        for k in config.kinds
    }
    assert summary["examples"] == {k: n for k, n in n_ok.items() if n}


def test_reasked_conversation_names_the_fault(tmp_path):
    """An invalid answer is asked again in the same conversation, with the fault named."""
    seen = []

    def behave(body, arrival):
        seen.append(body["messages"])
        return ("content", "no json here") if arrival == 0 else _answer(body["seed"], "valid")

    config = GenerationConfig(kinds=("sts",), examples_per_kind=1, languages={"en": 1.0})
    with ScriptedServer(behave) as server:
        pool = EndpointPool([server.url], "scripted", timeout=5, backoff_base=0.01)
        asyncio.run(run_generation(config, pool, tmp_path / "log.jsonl", concurrency=1, progress=False))
    first, second = seen
    assert len(first) == 1 and len(second) == 3
    assert second[1] == {"role": "assistant", "content": "no json here"}
    assert "no JSON object could be parsed" in second[2]["content"]


def test_two_endpoints_share_the_load_and_json_mode_falls_back(tmp_path):
    formats = defaultdict(list)

    def strict(body, arrival):  # a server without JSON mode
        formats["strict"].append(body.get("response_format"))
        if "response_format" in body:
            return ("status", 400, {})
        return _answer(body["seed"], "valid")

    def lenient(body, arrival):
        formats["lenient"].append(body.get("response_format"))
        return _answer(body["seed"], "valid")

    config = GenerationConfig(kinds=("sts",), examples_per_kind=12, languages={"en": 1.0})
    with ScriptedServer(strict, delay=0.05) as a, ScriptedServer(lenient, delay=0.05) as b:
        pool = EndpointPool([a.url, b.url], "scripted", timeout=5, backoff_base=0.01)
        summary = asyncio.run(run_generation(config, pool, tmp_path / "log.jsonl", concurrency=4, progress=False))
    assert summary["examples"] == {"sts": 12}
    assert len(formats["strict"]) >= 3 and len(formats["lenient"]) >= 3
    # JSON mode is tried (by the requests in flight before the first 400), then dropped for good.
    assert formats["strict"][0] == {"type": "json_object"}
    first_plain = formats["strict"].index(None)
    assert first_plain <= 4 and all(f is None for f in formats["strict"][first_plain:])
    assert all(f == {"type": "json_object"} for f in formats["lenient"])


def test_unauthorized_stops_the_run_without_recording_failures(tmp_path):
    config = GenerationConfig(kinds=("sts",), examples_per_kind=5, languages={"en": 1.0})
    log_path = tmp_path / "log.jsonl"
    with ScriptedServer(lambda body, arrival: ("status", 401, {})) as server:
        pool = EndpointPool([server.url], "scripted", timeout=5, backoff_base=0.01)
        with pytest.raises(FatalLLMError, match="401"):
            asyncio.run(run_generation(config, pool, log_path, concurrency=2, progress=False))
    assert read_generation_log(log_path) == []  # a resume after fixing the token redoes them all


# ------------------------------------------------------------------------------------------
# Kill -9 and resume; export; load_dataset in a fresh process
# ------------------------------------------------------------------------------------------
def deterministic_behaviour(body: dict, arrival: int) -> tuple:
    """Stateless: the answer depends only on the request (its seed and turn count), so two
    runs of the same plan get the same answers whatever the timing."""
    seed = body["seed"]
    if not is_brainstorm(body) and seed % 4 == 0 and len(body["messages"]) == 1:
        return ("content", "I am sorry, I cannot produce JSON today.")  # asked again, then valid
    return _answer(seed, "prose" if seed % 3 == 0 else "valid")


CLI_ARGS = [
    "--model",
    "scripted",
    "--kinds",
    ",".join(KINDS),
    "--examples-per-kind",
    "8",
    "--languages",
    "en:4,de,fr,es,zh",
    "--concurrency",
    "2",
    "--seed",
    "3",
    "--timeout",
    "5",
    "--backoff-base",
    "0.01",
    "--no-progress",
]


def _subprocess_env(offline: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_CACHE"):
        env.pop(name, None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _comparable(log_path: Path) -> dict:
    drop = {"time", "endpoint"}
    return {r["id"]: {k: v for k, v in r.items() if k not in drop} for r in read_generation_log(log_path)}


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(deterministic_behaviour, delay=0.06) as s:
        yield s


@pytest.fixture(scope="module")
def reference_dir(server, tmp_path_factory):
    """An uninterrupted run of the CLI (in-process), exported."""
    out = tmp_path_factory.mktemp("reference")
    assert generate_command.main(["--base-url", server.url, *CLI_ARGS, "--output", str(out)]) == 0
    return out


def test_killed_run_resumes_to_the_same_dataset(server, reference_dir, tmp_path):
    out = tmp_path / "killed"
    log_path = out / "raw" / "generations.jsonl"
    command = [sys.executable, str(SCRIPT), "--base-url", server.url, *CLI_ARGS, "--output", str(out)]
    process = subprocess.Popen(
        command, env=_subprocess_env(offline=False), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while not (log_path.exists() and len(log_path.read_bytes().splitlines()) >= 12):
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "the generator wrote too little"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    total = len(_comparable(reference_dir / "raw" / "generations.jsonl"))
    assert 12 <= len(read_generation_log(log_path)) < total  # killed mid-run
    assert not (out / "README.md").exists()

    # Restart with the same arguments: it resumes and completes.
    assert generate_command.main(["--base-url", server.url, *CLI_ARGS, "--output", str(out)]) == 0
    assert _comparable(log_path) == _comparable(reference_dir / "raw" / "generations.jsonl")
    for kind in KINDS:
        killed = (out / "data" / kind / "train-00000-of-00001.parquet").read_bytes()
        reference = (reference_dir / "data" / kind / "train-00000-of-00001.parquet").read_bytes()
        assert killed == reference, kind


def test_resume_with_other_arguments_is_refused(server, reference_dir):
    args = list(CLI_ARGS)
    args[args.index("--seed") + 1] = "4"
    with pytest.raises(ValueError, match="seed=3, now seed=4"):
        generate_command.main(["--base-url", server.url, *args, "--output", str(reference_dir)])


LOAD_ALL = """
import json, sys
from datasets import load_dataset
out = {}
for kind in sys.argv[2].split(","):
    ds = load_dataset(sys.argv[1], kind, split="train")
    out[kind] = {"features": {k: str(v) for k, v in ds.features.items()}, "rows": ds.to_list()}
print(json.dumps(out))
"""


def test_export_loads_in_a_fresh_process_and_rows_round_trip(reference_dir, tmp_path):
    readme = (reference_dir / "README.md").read_text()
    assert "configs:" in readme and "config_name: bitext" in readme
    assert (reference_dir / "recipe" / "e5mistral_synthetic.py").exists()
    env = _subprocess_env(offline=True)
    env["HF_DATASETS_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_ALL, str(reference_dir), ",".join(KINDS)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])

    records = read_generation_log(reference_dir / "raw" / "generations.jsonl")
    for kind in KINDS:
        rows = loaded[kind]["rows"]
        assert rows == list(dataset_rows(records, kind)), kind
        assert len(rows) == 8  # every request succeeded (some after a re-ask); no duplicates
        assert loaded[kind]["features"]["template"] == "Value('int32')"
        assert re.search(rf"\| `{kind}` \| [^|]+ \| {len(rows)} \| 0 \|", readme), kind  # real counts in the card
        training = to_training_row(kind, rows[0])
        seed = request_seed(rows[0]["id"])
        fields = OUTPUT_FIELDS[kind]
        assert training["query"] == valid_answer(seed)[fields[0]]
        assert training["positive"] == valid_answer(seed)[fields[1]]
        assert training["negatives"] == [valid_answer(seed)[f] for f in fields[2:]]
        assert training["instruction"] == rows[0]["task"] and training["instruction"]
        assert training["task"] == kind and training["language"] in {"en", "de", "fr", "es", "zh"}


def test_builder_runs_the_generation_when_the_log_is_missing(server, tmp_path):
    from e5mistral.synthetic import E5SyntheticData

    log_path = tmp_path / "raw" / "generations.jsonl"
    generation = {
        "base_urls": [server.url],
        "model": "scripted",
        "kinds": ["sts"],
        "examples_per_kind": 3,
        "languages": "en,de",
        "progress": False,
        "backoff_base": 0.01,
    }
    builder = E5SyntheticData(
        config_name="sts", log_path=str(log_path), generation=generation, cache_dir=str(tmp_path / "cache")
    )
    builder.download_and_prepare()
    rows = builder.as_dataset("train").to_list()
    assert [r["S1"] for r in rows] == [valid_answer(request_seed(f"0-sts-example-{i:06d}"))["S1"] for i in range(3)]
    assert log_path.exists()


def test_local_transformers_backend(tmp_path):
    """The offline backend runs a (tiny, random) chat model; its gibberish is recorded as failures
    with the reason, and the token counts come from the real tokenizer and generate()."""
    from e5mistral.synthetic.llm import TransformersChatBackend
    from e5mistral.testing import make_tiny_chat_model, make_tiny_tokenizer

    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    make_tiny_chat_model(tmp_path / "chat", template, "mistral", num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = template

    backend = TransformersChatBackend(str(tmp_path / "chat"), max_new_tokens=6, device="cpu")
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_dict=True
    )
    prompt_tokens = len(encoded["input_ids"])
    result = asyncio.run(backend.chat([{"role": "user", "content": "Hi"}], seed=1))
    assert result.prompt_tokens == prompt_tokens and 1 <= result.completion_tokens <= 6
    assert result.text == asyncio.run(backend.chat([{"role": "user", "content": "Hi"}], seed=1)).text  # seeded

    config = GenerationConfig(kinds=("sts",), examples_per_kind=2, languages={"en": 1.0})
    summary = asyncio.run(
        run_generation(config, backend, tmp_path / "log.jsonl", concurrency=2, max_reasks=0, progress=False)
    )
    assert summary["failures_by_reason"] == {"invalid_json": 2}
    assert summary["completion_tokens"] > 0
