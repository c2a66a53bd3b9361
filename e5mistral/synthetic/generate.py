"""The two-step generation pipeline: brainstorm task definitions, then one example per request.

How a run works:

1. :func:`~e5mistral.synthetic.plan.plan_requests` lays out every request from the arguments
   alone (see :mod:`~e5mistral.synthetic.plan`), so the plan never depends on timing.
2. Brainstorms run first, then examples, each request in a fresh conversation, under a
   concurrency limit. Each request carries its answer's JSON schema
   (:func:`~e5mistral.synthetic.schemas.answer_schema`) to the backend, which asks a server for
   it as a structured output or enforces it while decoding a local model. An answer is parsed
   strictly and validated (:mod:`~e5mistral.synthetic.validation`); an unusable answer is asked
   again, naming the fault, up to `max_reasks` times, then recorded as a failure with its reason.
   Transient HTTP faults are retried inside the backend.
3. Each finished request is appended to the generation log (:mod:`~e5mistral.synthetic.log`) as
   soon as it finishes. A restarted run skips the ids already logged, so a killed run resumed
   with the same arguments ends with the same log contents and the same dataset (rows are
   ordered by request position, exact duplicates dropped, see `builder.dataset_rows`).

The server going away (connection refused or reset, 429/502/503 through every retry) leaves the
request pending, not recorded (:class:`~e5mistral.synthetic.llm.EndpointsUnreachable` stops the
run; requests in flight are cancelled unrecorded), and the rerun asks it again. Only failures
that belong to the request (an unusable answer, HTTP 500, a hang past the timeout) are recorded
as final, so the log never depends on when a server vanished. The log's own faults (disk full,
a torn line, two runs at once) are in :mod:`~e5mistral.synthetic.log`.

Log record fields: `id, kind, step ("brainstorm"|"example"), index, template, language,
placeholders, task, status ("ok"|"failed"), output (the validated JSON fields, or
{"tasks": [...]} for a brainstorm), failure ({"reason", "detail"} or null), attempts,
usage ({"prompt_tokens", "completion_tokens"}), model, endpoint`.

Example:
    >>> from e5mistral.synthetic.llm import EndpointPool
    >>> backend = EndpointPool(["http://localhost:8000/v1"], model="mistral")  # doctest: +SKIP
    >>> summary = generate(log_path="out/raw/generations.jsonl", backend=backend,
    ...                    kinds=("sts",), examples_per_kind=10)  # doctest: +SKIP
    >>> from e5mistral.synthetic.summary import format_summary
    >>> print(format_summary(summary))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import UserError
from ..secrets import redact
from .builder import KINDS, read_generation_log
from .builder import E5SyntheticData as LogBuilder
from .languages import parse_language_weights
from .llm.base import ChatResult, FatalLLMError, LLMError, accepts_schema
from .log import GenerationLog, GenerationLogError, check_manifest
from .plan import GenerationConfig, Request, plan_requests, request_seed
from .schemas import AnswerSchema, answer_schema
from .summary import summarize
from .tasks import brainstorm_messages, example_messages, fixed_task, reask_message
from .validation import InvalidAnswer, extract_json, validate_brainstorm, validate_example

__all__ = ["E5SyntheticData", "generate", "run_generation"]


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
    check_manifest(log_path, config)
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
        from .llm.endpoints import EndpointPool

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


class E5SyntheticData(LogBuilder):
    """The dataset builder of :mod:`~e5mistral.synthetic.builder`, which also creates a missing log:
    given ``generation={...}`` (keyword arguments of :func:`generate`), it runs the generation first.

    Example:
        >>> builder = E5SyntheticData(config_name="sts", log_path="raw/generations.jsonl", generation={
        ...     "base_urls": ["http://localhost:8000/v1"], "model": "mistral", "kinds": ["sts"],
        ...     "examples_per_kind": 10})  # doctest: +SKIP
        >>> builder.download_and_prepare()  # doctest: +SKIP
    """

    def _create_log(self, path: str) -> None:
        if self.config.generation is None:
            super()._create_log(path)
        generate(log_path=path, **self.config.generation)
