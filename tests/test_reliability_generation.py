"""Generation under injected faults, and secrets that must never leak.

Faults, each injected for real and followed by a resume that must end with exactly the log of
an uninterrupted run (nothing lost, nothing twice):

- the LLM server vanishing mid-run: a server *process* killed with SIGKILL while requests are
  in flight (one server; and one of two sharing the load);
- a failed write to the log: `os.write` on the log's descriptor made to write short and then
  fail with ENOSPC (disk full), or to write short once and recover;
- a torn log: the last line cut mid-line, mid-character, before its newline, as the only line,
  or followed by a zero-filled tail; a corrupt line inside the log; a torn `run.json`;
  a second run started on a log that is being written.

Secrets: distinctive tokens are planted in OPENAI_API_KEY, HF_TOKEN and an explicit `token=`;
generation runs against a server that echoes the Authorization header back in its 500 and
401 error bodies; every output file (the log, run.json, Parquet, card, builder copy), the
captured stdout/stderr and every log record at DEBUG level are scanned for the tokens, and
the server's record of the Authorization header proves the token was really sent. Also: a
Hub token is not sent to a third-party LLM server, credentials in a --base-url stay out of the
log and the card, and push_to_hub's errors from a Hub that echoes the token name no token.

The LLM server is the test kit's loopback server run as a subprocess (`ServerProcess`, standard
library only), so that killing it is a real process death: sockets reset, the port refuses.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import os
import threading
import time
import traceback
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from e5mistral.cli import generate as generate_command
from e5mistral.secrets import redact
from e5mistral.synthetic.builder import read_generation_log
from e5mistral.synthetic.generate import run_generation
from e5mistral.synthetic.languages import parse_language_weights
from e5mistral.synthetic.llm import EndpointPool, EndpointsUnreachable, FatalLLMError
from e5mistral.synthetic.log import GenerationLog, GenerationLogError
from e5mistral.synthetic.plan import GenerationConfig, plan_requests, request_seed
from e5mistral.testing import ServerProcess


def LLMServer(mode: str = "reasked", delay: float = 0.02) -> ServerProcess:
    """The loopback server in its own process (`kill()` is a SIGKILL): `mode` is one of the
    test kit's behaviours (reasked, unavailable, leaky_401, leaky_500)."""
    return ServerProcess(mode, delay=delay)


CONFIG = GenerationConfig(
    kinds=("short_long", "long_short", "sts", "bitext"),
    examples_per_kind=5,
    seed=11,
    languages=parse_language_weights("en:3,de,zh"),
    examples_per_brainstorm=3,
)
TOTAL = sum(len(step) for step in plan_requests(CONFIG))  # 4 brainstorms + 20 examples
CLI_ARGS = [
    "--model", "scripted", "--kinds", ",".join(CONFIG.kinds), "--examples-per-kind", "5", "--seed", "11",
    "--languages", "en:3,de,zh", "--examples-per-brainstorm", "3", "--concurrency", "4", "--max-reasks", "1",
    "--timeout", "5", "--max-retries", "2", "--backoff-base", "0.01", "--backoff-max", "0.05",
]  # fmt: skip


def make_pool(*urls: str, token: str | None = None) -> EndpointPool:
    return EndpointPool(
        list(urls), "scripted", token=token, timeout=5, max_retries=2, backoff_base=0.01, backoff_max=0.05
    )


def generate_into(log_path: Path, *urls: str, token: str | None = None) -> dict:
    pool = make_pool(*urls, token=token)
    return asyncio.run(run_generation(CONFIG, pool, log_path, concurrency=4, max_reasks=1, progress=False))


def comparable(log_path: Path) -> dict:
    """The log as it bears on the dataset: per request id, everything but timing and endpoint."""
    return {
        r["id"]: {k: v for k, v in r.items() if k not in ("time", "endpoint")} for r in read_generation_log(log_path)
    }


def assert_complete_and_once(log_path: Path, reference: dict) -> None:
    """Nothing lost (the same records as the uninterrupted run), nothing twice (one line per id)."""
    assert comparable(log_path) == reference
    lines = log_path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(reference), "a request was logged twice or a line is torn"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run every faulty run must end up equal to."""
    log_path = tmp_path_factory.mktemp("reference") / "raw" / "generations.jsonl"
    with LLMServer() as server:
        generate_into(log_path, server.url)
    records = comparable(log_path)
    assert len(records) == TOTAL and all(r["status"] == "ok" for r in records.values())
    assert any(r["attempts"] == 2 for r in records.values())  # some answers were asked again
    return records


def wait_for_lines(log_path: Path, n: int, thread: threading.Thread, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (log_path.exists() and log_path.read_bytes().count(b"\n") >= n):
        assert thread.is_alive(), "the run ended before the fault was injected"
        assert time.monotonic() < deadline, "the run wrote too little"
        time.sleep(0.01)


def run_in_thread(target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def body():
        try:
            outcome["result"] = target()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


# ------------------------------------------------------------------------------------------
# Fault 1: the server vanishes mid-run
# ------------------------------------------------------------------------------------------
def test_server_killed_mid_run_leaves_requests_pending_and_resume_completes(reference, tmp_path):
    """Decision (documented in llm.py): a request that failed only because no server could be
    reached is not recorded as a failure; the run stops and the request stays pending."""
    log_path = tmp_path / "raw" / "generations.jsonl"
    with LLMServer(delay=0.15) as server:
        thread, outcome = run_in_thread(lambda: generate_into(log_path, server.url))
        wait_for_lines(log_path, 6, thread)
        arrived = set(server.kill())
        thread.join(60)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, EndpointsUnreachable), outcome
    assert error.reason == "connection" and "rerun the same command" in str(error)

    records = read_generation_log(log_path)
    assert 6 <= len(records) < TOTAL
    assert all(r["status"] == "ok" for r in records)  # nothing recorded as failed for the outage
    logged = {request_seed(r["id"]) for r in records}
    assert arrived - logged, "no request was in flight when the server died"

    with LLMServer() as server:  # a fresh server on another port: the plan does not depend on the URL
        summary = generate_into(log_path, server.url)
    assert summary["failures_by_reason"] == {}
    assert_complete_and_once(log_path, reference)


def test_one_of_two_servers_killed_mid_run_the_other_takes_the_load(reference, tmp_path):
    log_path = tmp_path / "raw" / "generations.jsonl"
    with LLMServer(delay=0.1) as doomed, LLMServer(delay=0.1) as survivor:
        thread, outcome = run_in_thread(lambda: generate_into(log_path, doomed.url, survivor.url))
        wait_for_lines(log_path, 6, thread)
        arrived_at_doomed = set(doomed.kill())
        thread.join(60)
        arrived_at_survivor = set(survivor.kill())
    assert "error" not in outcome, outcome.get("error")
    assert arrived_at_doomed and arrived_at_survivor  # both shared the load until one died
    assert_complete_and_once(log_path, reference)


def test_server_answering_503_throughout_leaves_requests_pending(tmp_path):
    """A proxy whose upstream is gone answers 503: like a dead server, not the request's fault."""
    log_path = tmp_path / "log.jsonl"
    with LLMServer(mode="unavailable", delay=0.0) as server:
        with pytest.raises(EndpointsUnreachable, match="http_503"):
            generate_into(log_path, server.url)
        assert len(server.kill()) >= 3  # every try was made: 1 + max_retries
    assert read_generation_log(log_path) == []


def test_unreachable_server_fails_fast_naming_no_credentials(tmp_path):
    """A port nobody listens on: the run stops at once; the URL's password is not in the error."""
    with LLMServer() as server:
        url = server.url.replace("http://", "http://user:PLANTED-url-password-42@")
        server.kill()
    pool = make_pool(url)
    assert "PLANTED" not in repr(pool.endpoints)
    with pytest.raises(EndpointsUnreachable) as info:
        asyncio.run(run_generation(CONFIG, pool, tmp_path / "log.jsonl", concurrency=2, progress=False))
    assert "PLANTED" not in "".join(traceback.format_exception(info.value))
    assert read_generation_log(tmp_path / "log.jsonl") == []
    planned = {r.id for step in plan_requests(CONFIG) for r in step}
    assert info.value.request_id in planned and f"[stopped at request {info.value.request_id}]" in str(info.value)


# ------------------------------------------------------------------------------------------
# Fault 2: a failed write (disk full)
# ------------------------------------------------------------------------------------------
def fail_log_writes(monkeypatch, log_path: Path, *, whole_writes: int, then: str) -> dict:
    """Patch `os.write` for the log's descriptor only: `whole_writes` normal writes, then one
    short write (half the bytes, as a filling disk does), then `then`: "enospc" (every later
    write fails with ENOSPC) or "recover" (later writes succeed)."""
    real_write = os.write
    state = {"calls": 0, "faults": 0}

    def write(fd, data):
        try:
            is_log = os.readlink(f"/proc/self/fd/{fd}") == str(log_path)
        except OSError:
            is_log = False
        if not is_log:
            return real_write(fd, data)
        state["calls"] += 1
        if state["calls"] <= whole_writes:
            return real_write(fd, data)
        if state["calls"] == whole_writes + 1:
            state["faults"] += 1
            return real_write(fd, bytes(data[: len(data) // 2]))
        if then == "enospc":
            state["faults"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return state


def test_disk_full_stops_with_a_clear_error_and_resume_completes(reference, tmp_path, capsys):
    out = tmp_path / "out"
    log_path = out / "raw" / "generations.jsonl"
    log_path.parent.mkdir(parents=True)
    with LLMServer() as server:
        with pytest.MonkeyPatch.context() as patch:
            state = fail_log_writes(patch, log_path, whole_writes=5, then="enospc")
            code = generate_command.main(["--base-url", server.url, *CLI_ARGS, "--no-progress", "--output", str(out)])
        assert code == 1 and state["faults"] >= 2
        err = capsys.readouterr().err
        assert f"could not append to the generation log {log_path}" in err
        assert "No space left on device" in err and "ENOSPC" in err
        assert f"stopped with 5 of {TOTAL} requests logged" in err and "rerun the same command" in err
        # The half-written line was cut off again: the log ends on a whole line.
        assert log_path.read_bytes().endswith(b"\n") and log_path.read_bytes().count(b"\n") == 5
        assert len(read_generation_log(log_path)) == 5

        # The disk has room again: the same command resumes.
        code = generate_command.main(["--base-url", server.url, *CLI_ARGS, "--no-progress", "--no-export", "--output", str(out)])  # fmt: skip
        assert code == 0
    assert_complete_and_once(log_path, reference)


def test_short_write_is_completed_not_left_torn(reference, tmp_path):
    """One short write, then the disk recovers: the line is finished, so no later record is glued
    onto half a line (which would make the log unreadable)."""
    log_path = tmp_path / "raw" / "generations.jsonl"
    log_path.parent.mkdir(parents=True)
    with LLMServer() as server, pytest.MonkeyPatch.context() as patch:
        state = fail_log_writes(patch, log_path, whole_writes=3, then="recover")
        generate_into(log_path, server.url)
    assert state["faults"] == 1
    assert_complete_and_once(log_path, reference)


# ------------------------------------------------------------------------------------------
# Fault 3: a torn log after a kill
# ------------------------------------------------------------------------------------------
def reference_lines(reference_log: Path) -> list[bytes]:
    return reference_log.read_bytes().splitlines(keepends=True)


def torn(lines: list[bytes], how: str) -> bytes:
    if how == "mid_line":
        return b"".join(lines[:7]) + lines[7][: len(lines[7]) // 2]
    if how == "mid_character":  # inside a multi-byte UTF-8 character
        line = lines[7]
        cut = next(i for i, byte in enumerate(line) if byte >= 0xC0) + 1
        return b"".join(lines[:7]) + line[:cut]
    if how == "newline_missing":  # a complete record whose newline never made it
        return b"".join(lines[:8])[:-1]
    if how == "only_line":
        return lines[0][:20]
    if how == "zero_filled_tail":  # what a power cut can leave after delayed allocation
        return b"".join(lines[:8]) + b"\0" * 4096
    raise ValueError(how)


@pytest.fixture(scope="module")
def reference_log(reference, tmp_path_factory) -> Path:
    """A finished log of the reference plan, whose lines the torn-log tests cut."""
    log_path = tmp_path_factory.mktemp("full") / "raw" / "generations.jsonl"
    with LLMServer(delay=0.0) as server:
        generate_into(log_path, server.url)
    assert comparable(log_path) == reference
    return log_path


@pytest.mark.parametrize("how", ["mid_line", "mid_character", "newline_missing", "only_line", "zero_filled_tail"])
def test_torn_last_line_is_dropped_and_its_request_asked_again(how, reference, reference_log, tmp_path):
    lines = reference_lines(reference_log)
    log_path = tmp_path / "raw" / "generations.jsonl"
    log_path.parent.mkdir(parents=True)
    log_path.write_bytes(torn(lines, how))
    whole = 0 if how == "only_line" else 7 if how.startswith("mid") else 8
    torn_id = json.loads(lines[whole if how != "newline_missing" else 7])["id"]
    readable = read_generation_log(log_path)  # what export would see before the resume
    assert torn_id not in {r["id"] for r in readable} or how == "newline_missing"

    with LLMServer(delay=0.0) as server:
        generate_into(log_path, server.url)
    assert_complete_and_once(log_path, reference)
    assert log_path.read_bytes().count(torn_id.encode()) == 1


def test_corrupt_line_inside_the_log_is_refused_naming_path_and_line(reference_log, tmp_path):
    lines = reference_lines(reference_log)
    log_path = tmp_path / "generations.jsonl"
    content = b"".join(lines[:3]) + b'{"id": "garbage\n' + b"".join(lines[3:6])
    log_path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{log_path}:4: not a JSON line"):
        asyncio.run(run_generation(CONFIG, make_pool("http://127.0.0.1:9/v1"), log_path, progress=False))
    assert log_path.read_bytes() == content  # nothing appended to, or cut from, a log it cannot read


def test_torn_manifest_is_rewritten_when_the_log_is_empty_and_refused_otherwise(reference, tmp_path):
    log_path = tmp_path / "raw" / "generations.jsonl"
    log_path.parent.mkdir(parents=True)
    (log_path.parent / "run.json").write_text('{"kinds": ["short_l')
    with LLMServer(delay=0.0) as server:
        generate_into(log_path, server.url)
    assert_complete_and_once(log_path, reference)
    assert json.loads((log_path.parent / "run.json").read_text())["seed"] == CONFIG.seed

    (log_path.parent / "run.json").write_text('{"kinds": ["short_l')
    with pytest.raises(GenerationLogError, match="run.json is unreadable"):
        generate_into(log_path, "http://127.0.0.1:9/v1")


def test_second_run_on_a_log_in_use_is_refused(tmp_path):
    log_path = tmp_path / "raw" / "generations.jsonl"
    holder = GenerationLog(log_path)  # as a run still going would hold it
    try:
        with pytest.raises(GenerationLogError, match="being written by another generator run"):
            generate_into(log_path, "http://127.0.0.1:9/v1")
    finally:
        holder.close()
    assert read_generation_log(log_path) == []


# ------------------------------------------------------------------------------------------
# Secrets: planted tokens appear nowhere but in the Authorization header
# ------------------------------------------------------------------------------------------
OPENAI_KEY = "sk-PLANTEDopenaiKey0123456789abcdef"
HUB_TOKEN = "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"
EXPLICIT_TOKEN = "PLANTED.explicit.token-0123456789"
PLANTED = (OPENAI_KEY, HUB_TOKEN, EXPLICIT_TOKEN)


def assert_no_secret(text: str, where: str) -> None:
    for token in PLANTED:
        assert token not in text, f"{token} leaked into {where}"
    assert "PLANTED" not in text, f"a piece of a planted token leaked into {where}"


def scan_folder(folder: Path) -> int:
    """Every file's bytes, and the decoded cells of every Parquet file (compression could hide a
    token from a byte scan). Returns the number of files scanned."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        assert_no_secret(path.read_bytes().decode("utf-8", errors="replace"), str(path))
        if path.suffix == ".parquet":
            assert_no_secret(json.dumps(pq.read_table(path).to_pylist(), default=str), str(path))
    return len(files)


@pytest.fixture
def debug_logging(monkeypatch, caplog):
    """Every logger at DEBUG (aiohttp's, the LLM client's, included), huggingface_hub's (which does
    not propagate by default) and its curl-style request dumps (HF_DEBUG) included."""
    from huggingface_hub.utils import logging as hf_logging

    monkeypatch.setattr("huggingface_hub.constants.HF_DEBUG", True)
    caplog.set_level(logging.DEBUG)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_debug()
    hf_logging.enable_propagation()
    yield caplog
    hf_logging.disable_propagation()
    hf_logging.set_verbosity(verbosity)


def all_logged(caplog) -> str:
    return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)


def test_env_tokens_never_leak_through_a_full_cli_run_with_500_errors(tmp_path, monkeypatch, capsys, debug_logging):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    out = tmp_path / "out"
    with LLMServer(mode="leaky_500") as server:
        code = generate_command.main(["--base-url", server.url, *CLI_ARGS, "--output", str(out)])  # progress bar on
    assert code == 0
    # The token did reach the server (so this test could fail), and only the LLM key did.
    assert set(server.authorizations) == {f"Bearer {OPENAI_KEY}"}
    # The 500s were recorded with the server's text, the echoed token cut out.
    failed = [r for r in read_generation_log(out / "raw" / "generations.jsonl") if r["status"] == "failed"]
    assert failed and all(r["failure"]["reason"] == "http_500" for r in failed)
    assert all("internal trouble; request had Authorization: Bearer ***" in r["failure"]["detail"] for r in failed)

    captured = capsys.readouterr()
    assert "http_500" in captured.out  # the summary printed the failures
    assert_no_secret(captured.out, "stdout")
    assert_no_secret(captured.err, "stderr")
    assert len(debug_logging.records) > 10  # the capture works: the run logged at DEBUG (datasets, filelock)
    assert_no_secret(all_logged(debug_logging), "logging")
    assert scan_folder(out) >= 6  # log, run.json, README, builder, Parquet shards


def test_explicit_token_never_leaks_and_a_401_error_names_no_token(tmp_path, debug_logging):
    log_path = tmp_path / "ok" / "raw" / "generations.jsonl"
    with LLMServer(mode="leaky_500") as server:
        summary = generate_into(log_path, server.url, token=EXPLICIT_TOKEN)
    assert summary["failures_by_reason"].get("http_500", 0) > 0
    assert set(server.authorizations) == {f"Bearer {EXPLICIT_TOKEN}"}

    with LLMServer(mode="leaky_401") as server:
        pool = make_pool(server.url, token=EXPLICIT_TOKEN)
        assert_no_secret(repr(pool.endpoints), "the pool's repr")
        with pytest.raises(FatalLLMError) as info:
            asyncio.run(run_generation(CONFIG, pool, tmp_path / "401" / "log.jsonl", progress=False))
    assert "401" in str(info.value) and "check the token" in str(info.value)
    assert "Authorization: Bearer ***" in str(info.value)  # the server's text is kept, the token is not
    assert_no_secret("".join(traceback.format_exception(info.value)), "the 401 traceback")
    assert_no_secret(all_logged(debug_logging), "logging")
    assert scan_folder(tmp_path / "ok") >= 2 and scan_folder(tmp_path / "401") >= 1


def test_cli_401_exits_with_a_message_naming_no_token(tmp_path, monkeypatch, capsys, debug_logging):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    out = tmp_path / "out"
    with LLMServer(mode="leaky_401") as server:
        code = generate_command.main(["--base-url", server.url, *CLI_ARGS, "--no-progress", "--output", str(out)])
    assert code == 1
    assert f"Bearer {OPENAI_KEY}" in server.authorizations
    err = capsys.readouterr().err
    assert "answered 401" in err and f"0 of {TOTAL} requests logged" in err
    assert_no_secret(err, "stderr")
    assert_no_secret(all_logged(debug_logging), "logging")
    scan_folder(out)


def test_credentials_in_the_base_url_stay_out_of_the_log_and_the_card(tmp_path, capsys):
    out = tmp_path / "out"
    with LLMServer() as server:
        url = server.url.replace("http://", "http://user:PLANTED-url-password-42@")
        code = generate_command.main(["--base-url", url, *CLI_ARGS, "--no-progress", "--output", str(out)])
    assert code == 0
    assert "--base-url http://***@127.0.0.1" in (out / "README.md").read_text()  # the command, redacted
    assert {r["endpoint"] for r in read_generation_log(out / "raw" / "generations.jsonl")} == {server.url}
    captured = capsys.readouterr()
    assert_no_secret(captured.out + captured.err, "stdout/stderr")
    scan_folder(out)


def test_hub_token_is_not_sent_to_a_third_party_server(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    with LLMServer(mode="leaky_500") as server:
        generate_into(tmp_path / "raw" / "generations.jsonl", server.url)
    assert set(server.authorizations) == {"Bearer EMPTY"}
    scan_folder(tmp_path / "raw")


@pytest.mark.parametrize("source", ["argument", "HF_TOKEN"])
def test_push_error_names_no_token(source, tmp_path, monkeypatch):
    """A fake Hub that refuses with 401 and echoes the Authorization header in its error."""
    from huggingface_hub.errors import HfHubHTTPError

    from e5mistral.synthetic.export import push_to_hub

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # conftest's; this "Hub" is local
    token = EXPLICIT_TOKEN if source == "argument" else None
    (tmp_path / "README.md").write_text("card")
    with LLMServer(mode="leaky_401") as hub:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url.removesuffix("/v1"))
        with pytest.raises(HfHubHTTPError) as info:
            push_to_hub(tmp_path, "me/synthetic", token=token)
    assert f"Bearer {token or HUB_TOKEN}" in hub.authorizations
    assert "401" in str(info.value) and "Bearer ***" in str(info.value)
    assert_no_secret("".join(traceback.format_exception(info.value)), "the push error")
    assert_no_secret(str(info.value.server_message), "the push error's server message")


def test_redact_covers_planted_tokens_urls_and_token_shapes(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    text = (
        f"key {OPENAI_KEY} hub {HUB_TOKEN} explicit {EXPLICIT_TOKEN} url http://u:PLANTEDpw@h/v1 "
        "Bearer PLANTEDbearer123 other hf_PLANTEDotherToken99 sk-PLANTEDotherKey99"
    )
    cleaned = redact(text, [EXPLICIT_TOKEN])
    assert_no_secret(cleaned, "redact()")
    assert cleaned.startswith("key *** hub *** explicit *** url http://***@h/v1 Bearer ***")
    assert redact("tokens used: 12, EMPTY token") == "tokens used: 12, EMPTY token"  # plain text untouched


def test_the_leak_scanner_finds_a_planted_token(tmp_path):
    """A clean scan means something only if the scanner finds a token that is there."""
    (tmp_path / "README.md").write_text(f"token {HUB_TOKEN}")
    with pytest.raises(AssertionError, match="leaked"):
        scan_folder(tmp_path)


def test_url_credentials_are_sent_as_basic_auth_instead_of_the_token(tmp_path, monkeypatch):
    """user:password in --base-url means HTTP Basic auth (as in curl), and then no bearer token."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    with LLMServer() as server:
        url = server.url.replace("http://", "http://user:PLANTED-url-password-42@")
        summary = generate_into(tmp_path / "raw" / "generations.jsonl", url)
    basic = "Basic " + base64.b64encode(b"user:PLANTED-url-password-42").decode()
    assert sum(summary["examples"].values()) > 0 and set(server.authorizations) == {basic}
    scan_folder(tmp_path / "raw")


def test_proxies_come_from_the_environment_minus_no_proxy(monkeypatch):
    from e5mistral.synthetic.llm.endpoints import _env_proxy

    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert _env_proxy("http://127.0.0.1:8000/v1") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.local:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert _env_proxy("http://gpu-box:8000/v1") == "http://proxy.local:3128"
    assert _env_proxy("http://127.0.0.1:8000/v1") is None
    assert _env_proxy("https://api.example.com/v1") is None  # HTTPS_PROXY is not set
