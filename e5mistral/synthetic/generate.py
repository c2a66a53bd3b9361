"""The two-step generation pipeline: brainstorm task definitions, then one example per request.

How a run works:

1. :func:`plan_requests` lays out every request from the arguments alone: for each kind,
   `ceil(examples_per_kind / examples_per_brainstorm)` brainstorm requests (asymmetric kinds
   only) and `examples_per_kind` example requests. Request `i` of a kind gets the id
   `"{seed}-{kind}-example-{i:06d}"` and draws its template, language(s), placeholder values,
   brainstorm and task position from `random.Random(f"{seed}:{kind}:example:{i}")`, so the
   plan never depends on timing.
2. Brainstorms run first, then examples, each request in a fresh conversation, under a
   concurrency limit. Each request carries its answer's JSON schema
   (:func:`~e5mistral.synthetic.schemas.answer_schema`) to the backend, which asks a server for
   it as a structured output or enforces it while decoding a local model. An answer is parsed
   strictly (:func:`extract_json`: plain JSON, a fenced block, or JSON inside prose; never
   `eval`) and validated (`tasks.validate_*`); an unusable answer is asked again, naming the
   fault, up to `max_reasks` times, then recorded as a failure with its reason. Transient HTTP
   faults are retried inside the backend.
3. Each finished request is appended to the generation log (JSONL, one line per request id,
   one `write` per line) as soon as it finishes. A restarted run skips the ids already logged,
   so a killed run resumed with the same arguments ends with the same log contents and the
   same dataset (rows are ordered by request position, exact duplicates dropped, see
   `builder.dataset_rows`).

Faults that stop a run, and what a rerun of the same command does about them:

- The server goes away (connection refused or reset, 429/502/503 through every retry): the
  request is not recorded but left pending (:class:`~e5mistral.synthetic.llm.EndpointsUnreachable`
  stops the run; requests in flight are cancelled unrecorded); the rerun asks it again. Only
  failures that belong to the request (an unusable answer, HTTP 500, a hang past the timeout)
  are recorded as final, so the log never depends on when a server vanished.
- A write to the log fails (disk full, I/O error): the bytes of that record are cut off again,
  so the log ends on a whole line, and :class:`GenerationLogError` stops the run naming the
  log path; the record's request is pending.
- A kill mid-write leaves a torn last line: it is cut off when the log is opened again, and
  its request is asked again.
- Two runs on one log at once: refused (an exclusive lock on the log), since both would ask
  the same pending requests.

Log record fields: `id, kind, step ("brainstorm"|"example"), index, template, language,
placeholders, task, status ("ok"|"failed"), output (the validated JSON fields, or
{"tasks": [...]} for a brainstorm), failure ({"reason", "detail"} or null), attempts,
usage ({"prompt_tokens", "completion_tokens"}), model, endpoint`.

Example:
    >>> from e5mistral.synthetic.llm import EndpointPool
    >>> backend = EndpointPool(["http://localhost:8000/v1"], model="mistral")  # doctest: +SKIP
    >>> summary = generate(log_path="out/raw/generations.jsonl", backend=backend,
    ...                    kinds=("sts",), examples_per_kind=10)  # doctest: +SKIP
    >>> print(format_summary(summary))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import UserError
from .builder import KINDS, dataset_rows, read_generation_log
from .languages import parse_language_weights
from .llm import ChatResult, FatalLLMError, LLMError, accepts_schema, redact
from .schemas import AnswerSchema, answer_schema
from .tasks import (
    BRAINSTORM_KINDS,
    InvalidAnswer,
    brainstorm_messages,
    example_messages,
    fixed_task,
    num_templates,
    plan_placeholders,
    reask_message,
    validate_brainstorm,
    validate_example,
)

__all__ = [
    "GenerationConfig",
    "GenerationLog",
    "GenerationLogError",
    "Request",
    "extract_json",
    "format_reasons",
    "format_summary",
    "generate",
    "plan_requests",
    "request_seed",
    "run_generation",
    "summarize",
]


@dataclass
class GenerationConfig:
    """What to generate. Every field shapes the plan, so a resumed run must repeat them all
    (checked against `run.json` beside the log)."""

    kinds: tuple[str, ...] = KINDS
    examples_per_kind: int = 100
    seed: int = 0
    languages: dict[str, float] = field(default_factory=lambda: parse_language_weights(None))
    tasks_per_brainstorm: int = 20
    examples_per_brainstorm: int = 20

    def __post_init__(self):
        self.kinds = tuple(self.kinds)
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds={list(self.kinds)}: unknown {unknown}; use some of {', '.join(KINDS)}")
        if self.examples_per_kind < 1:
            raise ValueError(f"examples_per_kind={self.examples_per_kind}; it must be >= 1")
        if self.examples_per_brainstorm < 1 or self.tasks_per_brainstorm < 1:
            raise ValueError("examples_per_brainstorm and tasks_per_brainstorm must be >= 1")
        if isinstance(self.languages, str):
            self.languages = parse_language_weights(self.languages)
        self.languages = {k: float(v) for k, v in sorted(self.languages.items())}
        if "bitext" in self.kinds and len(self.languages) < 2:
            raise ValueError(
                f"kind bitext pairs two languages, but languages={list(self.languages)}; add one to --languages "
                "(e.g. en,de) or leave bitext out of --kinds."
            )

    def n_brainstorms(self, kind: str) -> int:
        if kind not in BRAINSTORM_KINDS:
            return 0
        return math.ceil(self.examples_per_kind / self.examples_per_brainstorm)


@dataclass(frozen=True)
class Request:
    """One planned LLM request (its answer becomes one log record)."""

    id: str
    kind: str
    step: str  # "brainstorm" or "example"
    index: int
    template: int
    placeholders: dict[str, Any]
    brainstorm: int | None = None  # example step: which brainstorm's pool to draw the task from
    task_draw: float = 0.0  # example step: position in that pool, as a fraction in [0, 1)


def request_seed(request_id: str) -> int:
    """A 31-bit sampling seed derived from a request id, sent with every try of that request.

    Example:
        >>> request_seed("0-sts-example-000001") == request_seed("0-sts-example-000001")
        True
    """
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


def plan_requests(config: GenerationConfig) -> tuple[list[Request], list[Request]]:
    """All brainstorm and example requests of a run, from the config alone.

    Example:
        >>> brainstorms, examples = plan_requests(GenerationConfig(kinds=("short_long",), examples_per_kind=3))
        >>> [r.id for r in brainstorms], examples[2].id
        (['0-short_long-brainstorm-000000'], '0-short_long-example-000002')
    """
    brainstorms: list[Request] = []
    examples: list[Request] = []
    for kind in config.kinds:
        n_brainstorms = config.n_brainstorms(kind)
        for b in range(n_brainstorms):
            rng = random.Random(f"{config.seed}:{kind}:brainstorm:{b}")
            brainstorms.append(
                Request(
                    id=f"{config.seed}-{kind}-brainstorm-{b:06d}",
                    kind=kind,
                    step="brainstorm",
                    index=b,
                    template=rng.randrange(num_templates(kind, "brainstorm")),
                    placeholders={"n_tasks": config.tasks_per_brainstorm},
                )
            )
        for i in range(config.examples_per_kind):
            rng = random.Random(f"{config.seed}:{kind}:example:{i}")
            template = rng.randrange(num_templates(kind, "example"))
            placeholders = plan_placeholders(kind, rng, config.languages)
            examples.append(
                Request(
                    id=f"{config.seed}-{kind}-example-{i:06d}",
                    kind=kind,
                    step="example",
                    index=i,
                    template=template,
                    placeholders=placeholders,
                    brainstorm=rng.randrange(n_brainstorms) if n_brainstorms else None,
                    task_draw=rng.random(),
                )
            )
    return brainstorms, examples


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def extract_json(text: str) -> Any:
    """Parse the JSON value in an LLM answer: the whole text, else a fenced block, else the first
    `{...}` or `[...]` inside prose. Only `json` parsing is used (no eval); NaN/Infinity are
    refused. Raises :class:`InvalidAnswer` ("invalid_json") when nothing parses.

    Example:
        >>> extract_json('Sure! Here it is:\\n```json\\n{"S1": "a"}\\n```')
        {'S1': 'a'}
        >>> extract_json('The answer is {"label": "x"} as requested.')
        {'label': 'x'}
    """
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        try:
            return decoder.decode(candidate)
        except ValueError:
            pass
    tried = 0
    for match in re.finditer(r"[\[{]", text):
        tried += 1
        if tried > 64:  # bound the work on long junk answers
            break
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            return value
    snippet = " ".join(text.split())[:80]
    raise InvalidAnswer("invalid_json", f"no JSON object could be parsed from the answer: {snippet!r}")


def _truncate_partial_last_line(path: Path, chunk: int = 1 << 16) -> None:
    """Cut a last line without its newline (a writer killed mid-write), reading only the tail."""
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - chunk)
            f.seek(start)
            block = f.read(position - start)
            if position == end and block.endswith(b"\n"):
                return
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            position = start
        f.truncate(0)


class GenerationLogError(RuntimeError):
    """The generation log cannot be written or read; the message names its path and the fix."""


class GenerationLog:
    """The append-only JSONL log: `records` maps request id -> record (first one wins).

    Opening takes an exclusive lock (a second run on the same log is refused) and repairs a
    last line cut short by a killed writer. Every append writes a whole line on an `O_APPEND`
    descriptor; a short write is continued, and a failed one (disk full) is cut back to the
    last whole line before :class:`GenerationLogError` is raised, so the file never holds a
    partial line that a later append would glue onto.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise GenerationLogError(
                f"{self.path} is being written by another generator run; wait for it to finish "
                "(or stop it) before resuming, or write to a new --output folder"
            ) from None
        try:
            _truncate_partial_last_line(self.path)
            self.records = {r["id"]: r for r in read_generation_log(self.path)}
        except BaseException:
            os.close(self._fd)
            raise
        self._size = os.fstat(self._fd).st_size  # end of the last whole line
        self._broken: str | None = None

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line; raises GenerationLogError (the line not written)."""
        if self._broken:
            raise GenerationLogError(self._broken)
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = 0
        try:
            while written < len(line):  # os.write may write less than asked (e.g. a disk filling up)
                written += os.write(self._fd, line[written:])
        except OSError as error:
            self._broken = (
                f"could not append to the generation log {self.path}: {error.strerror or error} "
                f"(errno {errno.errorcode.get(error.errno, error.errno)}); the run stopped with "
                f"{len(self.records)} requests logged, none lost: fix the cause (e.g. free disk "
                "space), then rerun the same command to resume"
            )
            try:
                os.ftruncate(self._fd, self._size)  # drop the partial line; opening would too
            except OSError:
                pass
            raise GenerationLogError(self._broken) from error
        self._size += len(line)
        self.records.setdefault(record["id"], record)

    def close(self) -> None:
        os.close(self._fd)  # releases the lock


def _check_manifest(log_path: Path, config: GenerationConfig) -> None:
    manifest_path = log_path.parent / "run.json"
    current = asdict(config)
    current["kinds"] = list(config.kinds)
    previous = None
    if manifest_path.exists():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError as error:
            if log_path.exists() and log_path.stat().st_size:
                raise GenerationLogError(
                    f"{manifest_path} is unreadable ({error}) but {log_path} holds records: restore "
                    "run.json, or delete it to resume on trust that the arguments are the same"
                ) from None
            previous = None  # torn before any request was logged: write it again
    if previous is not None:
        for key, value in current.items():
            if previous.get(key) != value:
                raise UserError(
                    f"{log_path} was generated with {key}={previous.get(key)!r}, now {key}={value!r}; "
                    "resume with the same arguments, or write to a new --output folder"
                )
    else:
        temporary = manifest_path.with_name(f".{manifest_path.name}.tmp")
        try:  # write-then-rename: a kill never leaves a torn run.json
            temporary.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
            os.replace(temporary, manifest_path)
        except OSError as error:
            raise GenerationLogError(f"could not write {manifest_path}: {error}") from error


class _Runner:
    def __init__(self, backend, log: GenerationLog, config: GenerationConfig, max_reasks: int, bar):
        self.backend = backend
        self.log = log
        self.config = config
        self.max_reasks = max_reasks
        self.bar = bar
        self.failures = sum(1 for r in log.records.values() if r["status"] == "failed")
        self.tokens = sum(sum(r["usage"].values()) for r in log.records.values())
        self.with_schemas = accepts_schema(backend)  # a custom backend may predate schemas

    async def ask(
        self,
        request: Request,
        messages: list[dict[str, str]],
        validate: Callable[[Any], Any],
        schema: AnswerSchema | None = None,
    ):
        """Ask, parse, validate; re-ask with the fault named. Returns (output, failure, attempts, usage)."""
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        conversation = list(messages)
        endpoint = ""
        extra = {"schema": schema} if self.with_schemas and schema is not None else {}
        for attempt in range(1, self.max_reasks + 2):
            try:
                result: ChatResult = await self.backend.chat(conversation, seed=request_seed(request.id), **extra)
            except FatalLLMError as error:
                # Name the request: if every rerun stops at the same one, that request is the fault
                # (e.g. it makes the server drop the connection), not the server.
                error.request_id = request.id
                error.args = (f"{error.args[0]} [stopped at request {request.id}]",)
                raise
            except LLMError as error:
                return None, {"reason": error.reason, "detail": error.detail}, attempt, usage, endpoint
            usage["prompt_tokens"] += result.prompt_tokens
            usage["completion_tokens"] += result.completion_tokens
            endpoint = result.endpoint
            try:
                return validate(extract_json(result.text)), None, attempt, usage, endpoint
            except InvalidAnswer as error:
                fault = error
                conversation += [{"role": "assistant", "content": result.text}, reask_message(error.detail)]
        return None, {"reason": fault.reason, "detail": fault.detail}, attempt, usage, endpoint

    def record(self, request: Request, task, output, failure, attempts, usage, endpoint) -> None:
        placeholders = dict(request.placeholders)
        if failure:  # a server may echo the Authorization header in its error text
            failure = {"reason": failure["reason"], "detail": redact(failure["detail"])}
        self.log.append(
            {
                "id": request.id,
                "kind": request.kind,
                "step": request.step,
                "index": request.index,
                "template": request.template,
                "language": placeholders.get("language"),
                "placeholders": placeholders,
                "task": task,
                "status": "failed" if failure else "ok",
                "output": output,
                "failure": failure,
                "attempts": attempts,
                "usage": usage,
                "model": self.backend.name,
                "endpoint": endpoint,
                "time": round(time.time(), 3),
            }
        )
        self.failures += bool(failure)
        self.tokens += sum(usage.values())
        self.bar.set_postfix(failed=self.failures, tokens=self.tokens, refresh=False)
        self.bar.update(1)

    async def brainstorm(self, request: Request) -> None:
        n_tasks = request.placeholders["n_tasks"]
        messages = brainstorm_messages(request.kind, request.template, n_tasks)
        schema = answer_schema(request.kind, "brainstorm", n_tasks=n_tasks)
        output, failure, attempts, usage, endpoint = await self.ask(
            request, messages, lambda answer: {"tasks": validate_brainstorm(answer)}, schema
        )
        self.record(request, None, output, failure, attempts, usage, endpoint)

    def task_for(self, request: Request) -> str | None:
        """The example's task: fixed for sts/bitext; else drawn from its brainstorm's pool, or
        from the next successful brainstorm of the kind if that one failed."""
        task = fixed_task(request.kind)
        if task is not None:
            return task
        n = self.config.n_brainstorms(request.kind)
        for offset in range(n):
            b = (request.brainstorm + offset) % n
            record = self.log.records.get(f"{self.config.seed}-{request.kind}-brainstorm-{b:06d}")
            if record is not None and record["status"] == "ok":
                pool = record["output"]["tasks"]
                return pool[int(request.task_draw * len(pool))]
        return None

    async def example(self, request: Request) -> None:
        task = self.task_for(request)
        if task is None:
            failure = {"reason": "no_task_pool", "detail": f"every {request.kind} brainstorm failed"}
            self.record(request, None, None, failure, 0, {"prompt_tokens": 0, "completion_tokens": 0}, "")
            return
        messages = example_messages(request.kind, request.template, task, request.placeholders)
        schema = answer_schema(request.kind, "example")
        output, failure, attempts, usage, endpoint = await self.ask(
            request, messages, lambda answer: validate_example(request.kind, answer), schema
        )
        self.record(request, task, output, failure, attempts, usage, endpoint)


async def _run_pool(requests: Sequence[Request], work: Callable[[Request], Awaitable[None]], concurrency: int) -> None:
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    async def worker():
        while True:
            try:
                request = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await work(request)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(requests))):
                group.create_task(worker())
    except* (FatalLLMError, GenerationLogError) as errors:  # stop the run: the log keeps what finished
        error = errors.exceptions[0]
        raise error from error.__cause__  # not the group: the caller sees the one fault


async def run_generation(
    config: GenerationConfig,
    backend,
    log_path: str | os.PathLike,
    *,
    concurrency: int = 16,
    max_reasks: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the pipeline, appending to `log_path`; returns :func:`summarize` of the log."""
    if concurrency < 1:
        raise UserError(f"concurrency={concurrency}; it must be >= 1")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _check_manifest(log_path, config)
    brainstorms, examples = plan_requests(config)
    log = GenerationLog(log_path)
    total = len(brainstorms) + len(examples)
    done = sum(1 for r in (*brainstorms, *examples) if r.id in log.records)
    bar = tqdm(total=total, initial=done, unit="req", desc="generating", disable=not progress, dynamic_ncols=True)
    runner = _Runner(backend, log, config, max_reasks, bar)
    try:
        await _run_pool([r for r in brainstorms if r.id not in log.records], runner.brainstorm, concurrency)
        await _run_pool([r for r in examples if r.id not in log.records], runner.example, concurrency)
    finally:
        bar.close()
        log.close()
        await backend.aclose()
    return summarize(read_generation_log(log_path), config.kinds)


def generate(
    *,
    log_path: str | os.PathLike,
    backend=None,
    base_urls: Sequence[str] | None = None,
    model: str | None = None,
    kinds: Sequence[str] = KINDS,
    examples_per_kind: int = 100,
    seed: int = 0,
    languages: str | dict[str, float] | None = None,
    concurrency: int = 16,
    max_reasks: int = 2,
    progress: bool = True,
    **backend_kwargs,
) -> dict[str, Any]:
    """Synchronous entry point: build the backend (an :class:`~e5mistral.synthetic.llm.EndpointPool`
    over `base_urls`, unless `backend` is given; `json_mode="schema"` unless given, as on the
    command line) and run :func:`run_generation`.

    Example:
        >>> generate(log_path="out/raw/generations.jsonl", base_urls=["http://localhost:8000/v1"],
        ...          model="mistral", kinds=["sts"], examples_per_kind=5)  # doctest: +SKIP
    """
    if backend is None:
        if not base_urls or not model:
            raise ValueError("generate() needs backend=..., or base_urls=[...] and model=...")
        from .llm import EndpointPool

        backend_kwargs.setdefault("json_mode", "schema")
        backend = EndpointPool(list(base_urls), model, **backend_kwargs)
    elif backend_kwargs:
        raise ValueError(f"backend keyword arguments {sorted(backend_kwargs)} are ignored when backend= is given")
    if languages is None or isinstance(languages, str):
        languages = parse_language_weights(languages)
    config = GenerationConfig(kinds=tuple(kinds), examples_per_kind=examples_per_kind, seed=seed, languages=languages)
    return asyncio.run(
        run_generation(config, backend, log_path, concurrency=concurrency, max_reasks=max_reasks, progress=progress)
    )


def summarize(records: Sequence[dict[str, Any]], kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """Statistics of a log: dataset rows per kind and per (kind, language) after duplicate
    removal, duplicates dropped, the valid share per kind (`valid_share`: valid example answers of
    the example requests logged, and the attempts they took), failures by reason, the kinds with
    example requests logged but no row (their requests and failures by reason), requests and
    tokens used.

    Example:
        >>> summarize([])["examples"]
        {}
        >>> failed = {"kind": "sts", "step": "example", "status": "failed", "attempts": 3, "model": "m",
        ...           "failure": {"reason": "invalid_json", "detail": "..."},
        ...           "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
        >>> summarize([failed], ["sts"])["valid_share"]
        {'sts': {'valid': 0, 'requests': 1, 'attempts': 3, 'share': 0.0}}
    """
    examples: dict[str, int] = {}
    by_language: dict[str, dict[str, int]] = {}
    duplicates: dict[str, int] = {}
    for kind in kinds:
        rows = list(dataset_rows(records, kind))
        ok = sum(1 for r in records if r["kind"] == kind and r["step"] == "example" and r["status"] == "ok")
        if not rows and not ok:
            continue
        examples[kind] = len(rows)
        duplicates[kind] = ok - len(rows)
        by_language[kind] = dict(sorted(Counter(r["language"] for r in rows).items(), key=lambda kv: (-kv[1], kv[0])))
    valid_share: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        logged = [r for r in records if r["kind"] == kind and r["step"] == "example"]
        if logged:
            valid = sum(1 for r in logged if r["status"] == "ok")
            valid_share[kind] = {
                "valid": valid,
                "requests": len(logged),
                "attempts": sum(int(r.get("attempts") or 0) for r in logged),
                "share": valid / len(logged),
            }
    failures = Counter(r["failure"]["reason"] for r in records if r["status"] == "failed")
    without_examples = {}  # kinds with example requests logged but no row: missing from the dataset
    for kind in kinds:
        logged = [r for r in records if r["kind"] == kind]
        if kind not in examples and any(r["step"] == "example" for r in logged):
            reasons = Counter(r["failure"]["reason"] for r in logged if r["status"] == "failed")
            without_examples[kind] = {"requests": len(logged), "failures_by_reason": dict(reasons.most_common())}
    return {
        "examples": examples,
        "examples_by_language": by_language,
        "duplicates_dropped": duplicates,
        "valid_share": valid_share,
        "failures_by_reason": dict(failures.most_common()),
        "kinds_without_examples": without_examples,
        "requests": len(records),
        "brainstorms_ok": sum(1 for r in records if r["step"] == "brainstorm" and r["status"] == "ok"),
        "brainstorms": sum(1 for r in records if r["step"] == "brainstorm"),
        "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["usage"]["completion_tokens"] for r in records),
        "models": sorted({r["model"] for r in records if r.get("model")}),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text report of :func:`summarize`; it ends with a WARNING line for each kind that
    has example requests logged but no valid example (the kind is missing from the dataset).

    Example:
        >>> failed = {"kind": "sts", "step": "example", "status": "failed", "language": "en", "model": "m",
        ...           "failure": {"reason": "invalid_json", "detail": "..."},
        ...           "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
        >>> print(format_summary(summarize([failed], ["sts"])).splitlines()[-1])
        WARNING: kind sts has no valid example: 1 request logged, failures: invalid_json 1
    """
    lines = ["examples per kind (after dropping exact duplicates):"]
    for kind, n in summary["examples"].items():
        langs = ", ".join(f"{code} {count}" for code, count in summary["examples_by_language"][kind].items())
        lines.append(f"  {kind:<12} {n:>7}  ({summary['duplicates_dropped'][kind]} duplicates dropped)  {langs}")
    if not summary["examples"]:
        lines.append("  (none)")
    if summary.get("valid_share"):
        lines.append("valid answers per kind (example requests; attempts include re-asks):")
        for kind, share in summary["valid_share"].items():
            lines.append(
                f"  {kind:<12} {share['valid']:>7} of {share['requests']} ({share['share']:.0%}) "
                f"in {share['attempts']} attempts"
            )
        if summary.get("brainstorms"):
            lines.append(f"  {'brainstorms':<12} {summary['brainstorms_ok']:>7} of {summary['brainstorms']}")
    lines.append("failures by reason:")
    lines += [f"  {reason:<16} {n:>7}" for reason, n in summary["failures_by_reason"].items()] or ["  (none)"]
    lines.append(
        f"requests logged: {summary['requests']}; tokens used: {summary['prompt_tokens']} prompt + "
        f"{summary['completion_tokens']} completion = {summary['prompt_tokens'] + summary['completion_tokens']}"
    )
    for kind, missing in summary.get("kinds_without_examples", {}).items():
        n = missing["requests"]
        lines.append(
            f"WARNING: kind {kind} has no valid example: {n} request{'s' if n != 1 else ''} logged, "
            f"failures: {format_reasons(missing['failures_by_reason'])}"
        )
    return "\n".join(lines)


def format_reasons(failures_by_reason: dict[str, int]) -> str:
    """Failure counts on one line, most frequent first.

    Example:
        >>> format_reasons({"invalid_json": 20, "no_task_pool": 4})
        'invalid_json 20, no_task_pool 4'
    """
    return ", ".join(f"{reason} {n}" for reason, n in failures_by_reason.items()) or "none"
