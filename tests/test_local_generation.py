"""Real generation: the local backend batches requests and enforces each answer's JSON schema;
servers are asked for the schema as `response_format` and fall back where they refuse it.

The local model is a tiny random Llama (2 layers, hidden 32) on the project's tiny tokenizer with a
plain chat template, built in-process (no download). A random model writes garbage, so an answer
that parses and passes the project's own validators shows the schema was enforced; the same
model without constraints fails every kind.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from e5mistral.cli import generate as generate_command
from e5mistral.errors import UserError
from e5mistral.synthetic import schemas as schemas_module
from e5mistral.synthetic.builder import KINDS, OUTPUT_FIELDS, read_generation_log
from e5mistral.synthetic.generate import run_generation
from e5mistral.synthetic.llm import EndpointPool, TransformersChatBackend
from e5mistral.synthetic.plan import GenerationConfig
from e5mistral.synthetic.schemas import answer_schema
from e5mistral.synthetic.tasks import (
    BRAINSTORM_KINDS,
    brainstorm_messages,
    example_messages,
    fixed_task,
    plan_placeholders,
)
from e5mistral.synthetic.validation import InvalidAnswer, extract_json, validate_brainstorm, validate_example
from e5mistral.testing import ScriptedServer, always_valid, make_tiny_chat_model

needs_llguidance = pytest.mark.skipif(
    importlib.util.find_spec("llguidance") is None, reason="llguidance (the local extra) is not installed"
)
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
FIELD_CHARS = 24  # strings of a random model run to their bound: keep them short
MAX_NEW_TOKENS = 640  # > the longest bounded answer: 3 fields x 24 characters x 6 tokens (\uXXXX) + keys


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one intra-op thread is faster, and fair to the other tests on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-chat")
    return str(make_tiny_chat_model(folder, CHAT_TEMPLATE, "llama", attention_bias=False, max_position_embeddings=2048))


def backend_for(folder, **kwargs) -> TransformersChatBackend:
    options = {"max_new_tokens": MAX_NEW_TOKENS, "device": "cpu", "max_field_chars": FIELD_CHARS}
    options.update(kwargs)
    return TransformersChatBackend(folder, **options)


def requests_of_every_step(seed: int = 0):
    """(kind, step, messages, schema, validate) for each brainstorm kind's step 1 and each kind's step 2."""
    import random

    out = []
    for kind in BRAINSTORM_KINDS:
        out.append(
            (kind, "brainstorm", brainstorm_messages(kind, 0, 3), answer_schema(kind, "brainstorm", n_tasks=3),
             validate_brainstorm)
        )
    for kind in KINDS:
        placeholders = plan_placeholders(kind, random.Random(seed), {"en": 1.0, "de": 1.0})
        task = fixed_task(kind) or "Given a question about cooking, retrieve recipes that answer it."
        out.append(
            (kind, "example", example_messages(kind, 0, task, placeholders), answer_schema(kind, "example"),
             lambda answer, kind=kind: validate_example(kind, answer))
        )
    return out


@needs_llguidance
def test_schema_enforced_answers_pass_the_validators_for_every_kind(chat_folder):
    backend = backend_for(chat_folder, batch_size=8)
    requests = requests_of_every_step()
    results = backend.generate(
        [r[2] for r in requests], seeds=list(range(len(requests))), schemas=[r[3] for r in requests]
    )
    for (kind, step, _, schema, validate), result in zip(requests, results):
        answer = json.loads(result.text)  # the whole answer is JSON, nothing around it
        expected = ["tasks"] if step == "brainstorm" else list(OUTPUT_FIELDS[kind])
        assert list(answer) == expected, (kind, step, result.text)
        validate(answer)  # raises InvalidAnswer if the project's validator refuses it
        assert 0 < result.completion_tokens < MAX_NEW_TOKENS  # it ended (EOS), not cut at the limit
        if step == "brainstorm":
            assert 1 <= len(answer["tasks"]) <= 3
        assert all(len(v) <= FIELD_CHARS for v in (answer["tasks"] if step == "brainstorm" else answer.values()))


def test_without_constraints_the_random_model_fails_every_kind(chat_folder):
    backend = backend_for(chat_folder, batch_size=8, json_mode="off", max_new_tokens=64)
    requests = requests_of_every_step()
    results = backend.generate(
        [r[2] for r in requests], seeds=list(range(len(requests))), schemas=[r[3] for r in requests]
    )
    for (kind, step, _, _, validate), result in zip(requests, results):
        with pytest.raises(InvalidAnswer):
            validate(extract_json(result.text))


@needs_llguidance
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "seeded-sampling"])
def test_a_batch_answers_as_one_request_at_a_time(chat_folder, do_sample):
    """Left padding and shared steps change nothing: greedy answers are the same, and so are
    sampled ones, since each request samples with its own seeded generator."""
    requests = requests_of_every_step()[2:9]  # prompts of different lengths
    conversations, schemas = [r[2] for r in requests], [r[3] for r in requests]
    seeds = [11 * i for i in range(len(requests))]
    batched = backend_for(chat_folder, batch_size=8, do_sample=do_sample)
    single = backend_for(chat_folder, batch_size=1, do_sample=do_sample)
    together = batched.generate(conversations, seeds=seeds, schemas=schemas)
    alone = single.generate(conversations, seeds=seeds, schemas=schemas)
    assert [r.text for r in together] == [r.text for r in alone]
    assert [(r.prompt_tokens, r.completion_tokens) for r in together] == [
        (r.prompt_tokens, r.completion_tokens) for r in alone
    ]
    assert len({r.text for r in together}) == len(together)


@needs_llguidance
def test_the_pipeline_batches_requests_in_flight_and_every_kind_is_valid(chat_folder, tmp_path):
    backend = backend_for(chat_folder, batch_size=4)
    batch_sizes = []
    run = backend._run

    def recording_run(batch):
        batch_sizes.append(len(batch))
        return run(batch)

    backend._run = recording_run
    config = GenerationConfig(
        kinds=KINDS, examples_per_kind=2, languages={"en": 1.0, "de": 1.0}, tasks_per_brainstorm=3
    )
    summary = asyncio.run(run_generation(config, backend, tmp_path / "a.jsonl", concurrency=8, progress=False))
    assert max(batch_sizes) == 4 and sum(batch_sizes) >= 6 * 2 + 4  # batched, never above batch_size
    assert summary["examples"] == {kind: 2 for kind in KINDS}
    assert {k: s["share"] for k, s in summary["valid_share"].items()} == {kind: 1.0 for kind in KINDS}
    assert summary["brainstorms_ok"] == summary["brainstorms"] == 4

    # A request's answer does not depend on its batch: one at a time gives the same log contents,
    # so a resumed run (other batches) ends with the dataset of an uninterrupted one.
    alone = backend_for(chat_folder, batch_size=1)
    asyncio.run(run_generation(config, alone, tmp_path / "b.jsonl", concurrency=1, progress=False))

    def outputs(path):
        return {r["id"]: (r["output"], r["usage"]) for r in read_generation_log(path)}

    assert outputs(tmp_path / "a.jsonl") == outputs(tmp_path / "b.jsonl")


@needs_llguidance
def test_generate_data_cli_with_a_local_model(chat_folder, tmp_path, monkeypatch, capsys):
    """--local-model with --batch-size: the summary reports the valid share per kind."""
    for kind in ("sts", "bitext"):  # short fields, so the random model's answers end in time
        monkeypatch.setitem(schemas_module.FIELD_MAX_CHARS, kind, dict.fromkeys(OUTPUT_FIELDS[kind], FIELD_CHARS))
    code = generate_command.main(
        ["--local-model", chat_folder, "--kinds", "sts,bitext", "--examples-per-kind", "3", "--languages", "en,de",
         "--max-tokens", str(MAX_NEW_TOKENS), "--batch-size", "3", "--concurrency", "6", "--no-progress",
         "--output", str(tmp_path / "out")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "valid answers per kind" in out
    assert "sts                3 of 3 (100%)" in out and "bitext             3 of 3 (100%)" in out
    assert (tmp_path / "out" / "README.md").exists()


def test_missing_llguidance_is_one_line_user_error(chat_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # import llguidance -> ImportError
    with pytest.raises(UserError, match=r"pip install 'e5mistral\[local\]'"):
        backend_for(chat_folder)
    backend_for(chat_folder, json_mode="off")  # free text needs no library


# ------------------------------------------------------------------------------------------
# Servers: response_format json_schema first, then json_object, then none where refused
# ------------------------------------------------------------------------------------------
def formats_seen(refuse, tmp_path, **pool_kwargs):
    seen = []

    def behave(body, arrival):
        response_format = body.get("response_format")
        seen.append(response_format)
        if response_format is not None and response_format["type"] in refuse:
            return ("status", 400, {})
        return always_valid(body, arrival)

    config = GenerationConfig(kinds=("short_long", "sts"), examples_per_kind=2, languages={"en": 1.0})
    with ScriptedServer(behave) as server:
        pool = EndpointPool([server.url], "scripted", timeout=5, backoff_base=0.01, **pool_kwargs)
        summary = asyncio.run(run_generation(config, pool, tmp_path / "log.jsonl", concurrency=1, progress=False))
    assert summary["examples"] == {"short_long": 2, "sts": 2}
    return seen


def test_server_is_asked_for_each_answers_json_schema(tmp_path):
    seen = formats_seen(refuse=(), tmp_path=tmp_path, json_mode="schema")
    names = [f["json_schema"]["name"] for f in seen]
    assert names == ["e5mistral_short_long_brainstorm"] + ["e5mistral_short_long_example"] * 2 + [
        "e5mistral_sts_example"
    ] * 2
    assert all(f["type"] == "json_schema" and f["json_schema"]["strict"] is True for f in seen)
    assert seen[-1]["json_schema"]["schema"] == answer_schema("sts", "example").schema
    assert seen[-1]["json_schema"]["schema"]["required"] == ["S1", "S2", "S3"]


def test_server_refusing_json_schema_gets_json_object_then_nothing(tmp_path):
    seen = formats_seen(refuse=("json_schema",), tmp_path=tmp_path / "a", json_mode="schema")
    assert seen[0]["type"] == "json_schema"
    assert seen[1:] == [{"type": "json_object"}] * 5  # the refused request asked again, and all later ones

    seen = formats_seen(refuse=("json_schema", "json_object"), tmp_path=tmp_path / "b", json_mode="schema")
    assert seen[0]["type"] == "json_schema" and seen[1] == {"type": "json_object"}
    assert seen[2:] == [None] * 5


def test_generate_data_cli_asks_for_schemas_by_default(tmp_path, capsys):
    seen = []

    def behave(body, arrival):
        seen.append((body.get("response_format") or {}).get("type"))
        return always_valid(body, arrival)

    with ScriptedServer(behave) as server:
        code = generate_command.main(
            ["--base-url", server.url, "--model", "scripted", "--kinds", "sts", "--examples-per-kind", "2",
             "--languages", "en", "--no-progress", "--no-export", "--output", str(tmp_path / "out")]
        )  # fmt: skip
    assert code == 0 and seen == ["json_schema", "json_schema"]
    assert "sts                2 of 2 (100%)" in capsys.readouterr().out


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_seeded_sampling_follows_the_softmax_and_never_picks_a_masked_token(temperature, top_p):
    """Decoding's inverse-CDF sampler against the distribution it must draw from: 20,000 rows, each
    with its own seeded generator, one step; every token's frequency within 5 binomial standard
    deviations of its probability (after temperature and the top-p cut), a -inf token never drawn."""
    from e5mistral.synthetic.llm.grammar import Decoding

    rows = 20_000
    logits = torch.tensor([2.0, 1.0, 0.5, float("-inf"), 0.0, -1.0, 1.5])
    generators = [torch.Generator().manual_seed(seed) for seed in range(rows)]
    decoding = Decoding([None] * rows, generators, temperature=temperature, top_p=top_p, eos_token_ids=[99],
                        grammars=None)
    out = decoding(torch.zeros((rows, 1), dtype=torch.long), logits.expand(rows, -1).clone())
    assert torch.isfinite(out).sum(dim=1).eq(1).all()  # one token kept per row, the rest -inf
    counts = torch.bincount(out.argmax(dim=1), minlength=len(logits)).double()

    probs = torch.softmax(logits.double() / temperature, dim=0)
    ordered, order = probs.sort(descending=True)
    kept = torch.zeros_like(probs, dtype=torch.bool)
    kept[order[(ordered.cumsum(0) - ordered) <= top_p]] = True  # the smallest set reaching top_p
    expected = torch.where(kept, probs, 0.0)
    expected = expected / expected.sum()
    assert counts[3] == 0 and counts[~kept].sum() == 0
    spread = (rows * expected * (1 - expected)).sqrt()
    assert ((counts - rows * expected).abs() <= 5 * spread + 1).all(), (counts / rows, expected)
    if top_p < 1:
        assert (~kept).sum() >= 2  # the cut removed tokens here, so the check above tested it


def interrupt_at_step(backend, step: int) -> tuple[list[int], object]:
    """Make `backend` write until stopped (an EOS it cannot produce) and send this process a SIGINT
    at its `step`-th forward; returns the list that counts forwards and the hook to remove."""
    import os
    import signal

    backend.eos_token_ids = [len(backend.tokenizer) + 10]  # a token the model cannot write: no early end
    steps = []

    def count_and_interrupt(module, args):
        steps.append(1)
        if len(steps) == step:
            os.kill(os.getpid(), signal.SIGINT)

    return steps, backend.model.register_forward_pre_hook(count_and_interrupt)


def test_ctrl_c_ends_the_generate_call_in_flight_at_its_next_token(chat_folder):
    """`generate` runs on the event loop's thread, so Ctrl-C must reach it: the SIGINT sent at the
    40th decoding step ends the call at the next one (not after its 1800 planned tokens), the run
    ends in KeyboardInterrupt as asyncio.run ends any interrupted run, and no answer is returned."""
    import signal

    backend = backend_for(chat_folder, batch_size=2, json_mode="off", max_new_tokens=1800)
    steps, hook = interrupt_at_step(backend, 40)
    answers = []

    async def ask():
        try:
            answers.extend(await asyncio.gather(*(backend.chat([{"role": "user", "content": f"q{i}"}], seed=i)
                                                  for i in range(2))))
        finally:
            await backend.aclose()

    try:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(ask())
    finally:
        hook.remove()
    assert 40 <= len(steps) <= 42, len(steps)
    assert answers == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler in place is restored


def test_an_interrupted_synchronous_generate_raises_instead_of_returning_cut_answers(chat_folder):
    """`generate()` under a SIGINT handler that does not raise (a program's own "stop soon" flag):
    the call still ends at the next token, and `generate` raises LLMError("interrupted") rather than
    hand back the batch's cut-short answers as if they were finished."""
    import signal

    from e5mistral.synthetic.llm.base import LLMError

    backend = backend_for(chat_folder, batch_size=2, json_mode="off", max_new_tokens=1800)
    asked_to_stop = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: asked_to_stop.append(signum))
    steps, hook = interrupt_at_step(backend, 40)
    try:
        with pytest.raises(LLMError, match="interrupted"):
            backend.generate([[{"role": "user", "content": f"q{i}"}] for i in range(2)], seeds=[0, 1])
    finally:
        hook.remove()
        signal.signal(signal.SIGINT, previous)
    assert asked_to_stop == [signal.SIGINT]  # the program's own handler still ran
    assert 40 <= len(steps) <= 42, len(steps)
