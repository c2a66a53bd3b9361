"""Chat completions from OpenAI-compatible endpoints (vLLM, TGI, llama.cpp, hosted APIs).

:class:`EndpointPool` sends chat requests to one or more servers: a `POST {base_url}/chat/completions`
over one pooled `aiohttp` session with keep-alive. A whole generation run costs under 1 ms of
client CPU per request, so one event loop keeps hundreds of requests in flight
(`huggingface_hub.AsyncInferenceClient` cost 3-4 ms each and held a 64-way run to 0.83 of the
ideal rate; see BENCHMARKS.md). The load is shared: each request goes to the endpoint with the
fewest requests in flight. Transient faults (HTTP 429, 5xx, timeouts, dropped connections) are
retried with exponential backoff and jitter, waiting at least as long as a `Retry-After` (or
`retry-after-ms`) header asks. Structured outputs: with `json_mode="schema"` a request that
carries its answer's schema (:mod:`~e5mistral.synthetic.schemas`) asks for
`response_format={"type": "json_schema", ..., "strict": true}`; an endpoint that refuses it
(400/422) is asked with `{"type": "json_object"}` instead, and one that refuses that too, with no
`response_format`, for good (each endpoint on its own). `json_mode="auto"` starts at
`json_object`, "on" always sends it, "off" never.

Failed for good, or left pending? A failure is recorded in the log (and never asked again)
only when it belongs to the request: an unusable answer, an HTTP 500 or another error the
server answered with, a request that hung past the timeout. When the server itself is gone
(connection refused or reset, a connect timeout, 502/503, 429 after every retry), asking
again later would succeed, so the request is *not* recorded: :class:`EndpointsUnreachable`
stops the run and a rerun of the same command asks the pending requests again. Whether a
request ends in the log therefore never depends on when a server went away.

Secrets (:mod:`e5mistral.secrets`): tokens go only into the `Authorization` header. Every error
detail (server bodies included, which some servers use to echo the header back) passes through
`redact`, and endpoints are named without URL credentials. `HF_TOKEN` is a Hub token, so it is
sent to Hugging Face hosts only; any other server gets `OPENAI_API_KEY` or an explicit token.

Example:
    >>> pool = EndpointPool(["http://localhost:8000/v1"], model="mistral-7b-instruct")  # doctest: +SKIP
    >>> result = await pool.chat([{"role": "user", "content": "Say hi"}], seed=1)  # doctest: +SKIP
    >>> result.text, result.completion_tokens  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import aiohttp

from ...secrets import public_url, redact, token_from_env
from .base import JSON_MODES, ChatResult, EndpointsUnreachable, FatalLLMError, LLMError

if TYPE_CHECKING:
    from ..schemas import AnswerSchema

__all__ = ["EndpointPool", "chat_completions_url", "retry_after_seconds"]

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})
# Answers that say "the server is not there (now)", not "this request failed": after every
# retry the request is left pending for a rerun instead of being recorded as a failure.
UNAVAILABLE_STATUS = frozenset({429, 502, 503})
# What an endpoint is asked for, by level: it steps down one level on each 400/422 to a request
# that asked for more than plain text (json_mode "schema" starts at 2, "auto" and "on" at 1).
_FORMATS = ("no response_format", "response_format json_object", "response_format json_schema")

logger = logging.getLogger(__name__)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a `Retry-After` / `retry-after-ms` header asks to wait, or None.

    Example:
        >>> retry_after_seconds({"Retry-After": "2"}), retry_after_seconds({"retry-after-ms": "250"})
        (2.0, 0.25)
    """
    lower = {k.lower(): v for k, v in dict(headers or {}).items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def _env_proxy(url: str) -> str | None:
    """The proxy the environment sets for `url` (HTTP_PROXY/HTTPS_PROXY, minus NO_PROXY), or None."""
    parts = urlparse(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme) or None


def chat_completions_url(base_url: str) -> str:
    """Where an OpenAI-compatible server takes chat completions, from the base URL a user gives.

    Example:
        >>> [chat_completions_url(u) for u in ("http://h:8000/v1", "http://h:8000", "https://h/openai/v1/")]
        ['http://h:8000/v1/chat/completions', 'http://h:8000/v1/chat/completions', 'https://h/openai/v1/chat/completions']
    """
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def _chat_result(endpoint: str, data: Any) -> ChatResult:
    """The answer text and token counts of a chat completion's JSON body; LLMError if it has no text."""
    choices = data.get("choices") if isinstance(data, dict) else None
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise LLMError("empty_answer", f"{endpoint} returned no message content")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return ChatResult(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        endpoint=endpoint,
    )


@dataclass
class _Endpoint:
    url: str  # without credentials: safe to log and record
    chat_url: str = field(repr=False)  # where completions are posted, without credentials
    headers: dict[str, str] = field(repr=False)  # the Authorization header lives here
    auth: aiohttp.BasicAuth | None = field(repr=False)  # from user:password in the URL
    proxy: str | None = field(repr=False)  # from HTTP(S)_PROXY unless NO_PROXY covers the host
    format_level: int  # index into _FORMATS: what this endpoint is asked for (at most)
    in_flight: int = 0
    failures: int = 0  # connection faults in a row
    down_until: float = 0.0  # time.monotonic() before which it is only tried if all are down


class EndpointPool:
    """Chat completions from one or more OpenAI-compatible endpoints sharing the load.

    Args:
        base_urls: the servers' base URLs, e.g. `http://host:8000/v1`: completions go to
            `/chat/completions` under it (`/v1/chat/completions` when it has no `/v1`). A
            `user:password@` in the URL is sent as HTTP Basic auth instead of the token.
        model: the model name sent in the payload.
        token: API token; default :func:`token_from_env`. Sent only in the Authorization
            header, and redacted from every error message.
        json_mode: what `response_format` to ask for. "schema": the answer's JSON schema
            (`json_schema`, strict) where `chat` is given one, else `json_object`; an endpoint
            that answers 400/422 steps down to `json_object`, then to none, for good (the
            command line's and `generate()`'s default). "auto" (this class's default, as
            before schemas): `json_object`, dropped where refused. "on": always
            `json_object`. "off": never a `response_format`.
        temperature, top_p: sampling, 1.0 and 1.0 as in the recipe.
        max_tokens: completion limit, None for the server default.
        timeout: seconds to connect, and seconds without a byte of the answer, before a
            request counts as hung and is retried.
        max_retries: retries of transient faults (429, 5xx, timeouts, connection faults) per
            request. An endpoint that cannot be reached is avoided for a backoff delay while
            another one is up; when every try failed to reach a server, the run stops with
            :class:`EndpointsUnreachable` and the request stays pending.
        backoff_base, backoff_max: delay before retry n is `min(backoff_max, backoff_base * 2**n)`
            scaled by a random factor in [0.5, 1], and never below the server's Retry-After.

    Example:
        >>> pool = EndpointPool(["http://a:8000/v1", "http://b:8000/v1"], model="m")  # doctest: +SKIP
    """

    def __init__(
        self,
        base_urls: list[str],
        model: str,
        *,
        token: str | None = None,
        json_mode: str = "auto",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int | None = None,
        timeout: float = 300.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        rng: random.Random | None = None,
    ):
        if not base_urls:
            raise ValueError("EndpointPool needs at least one base URL, e.g. --base-url http://localhost:8000/v1")
        if json_mode not in JSON_MODES:
            raise ValueError(f"json_mode={json_mode!r}; use one of {', '.join(JSON_MODES)}")
        self.model = model
        self.json_mode = json_mode
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()
        self.timeout = timeout
        self.endpoints = []
        self._secrets: list[str] = []
        for url in base_urls:
            api_key = token or token_from_env(url)
            parts = urlparse(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"base URL {public_url(url)!r}: expected http(s)://host[:port]/v1")
            self._secrets += [api_key, parts.password or "", parts.username or ""]
            auth = None
            if parts.username is not None or parts.password is not None:  # URL credentials win, as in curl
                auth = aiohttp.BasicAuth(parts.username or "", parts.password or "")
            self.endpoints.append(
                _Endpoint(
                    url=public_url(url),
                    chat_url=chat_completions_url(public_url(url)),
                    headers={} if auth else {"Authorization": f"Bearer {api_key}"},
                    auth=auth,
                    proxy=_env_proxy(url),
                    format_level={"schema": 2, "auto": 1, "on": 1, "off": 0}[json_mode],
                )
            )
        self._next = 0
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        return self.model

    def _pick(self) -> _Endpoint:
        # Fewest in flight among the endpoints up; ties broken round-robin so idle endpoints all
        # get work. A dead endpoint fails fast, so without the `down_until` check it would look
        # idle and draw every request.
        n = len(self.endpoints)
        order = [self.endpoints[(self._next + i) % n] for i in range(n)]
        self._next = (self._next + 1) % n
        now = time.monotonic()
        up = [e for e in order if e.down_until <= now]
        if not up:
            return min(order, key=lambda e: e.down_until)
        return min(up, key=lambda e: e.in_flight)

    def _http(self) -> aiohttp.ClientSession:
        """The pooled session of the running event loop (made on first use: sessions belong to a loop)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # the generator's concurrency is the limit
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
                # Proxies come from the environment once per endpoint (`_env_proxy`); trust_env would look
                # them up, and ~/.netrc, in a thread on every request, and a netrc entry would clash
                # with the Authorization header.
                trust_env=False,
            )
            self._session_loop = loop
        return self._session

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _delay(self, retry: int, retry_after: float | None) -> float:
        backoff = min(self.backoff_max, self.backoff_base * 2**retry) * self._rng.uniform(0.5, 1.0)
        return backoff if retry_after is None else max(backoff, retry_after)

    async def chat(
        self, messages: list[dict[str, str]], *, seed: int | None = None, schema: AnswerSchema | None = None
    ) -> ChatResult:
        """One completion of `messages`, retried on transient faults; raises LLMError.

        `schema` (an :class:`~e5mistral.synthetic.schemas.AnswerSchema`) is asked for as
        `response_format` `json_schema` where `json_mode="schema"` and the endpoint has not
        refused it.
        """
        retry = 0
        while True:
            endpoint = self._pick()
            level = min(endpoint.format_level, 2 if schema is not None else 1)
            endpoint.in_flight += 1
            payload = {"model": self.model, "messages": messages}
            payload.update({key: value for key, value in self.sampling.items() if value is not None})
            if seed is not None:
                payload["seed"] = seed
            if level == 2:
                payload["response_format"] = schema.response_format()
            elif level == 1:
                payload["response_format"] = {"type": "json_object"}
            try:
                async with self._http().post(
                    endpoint.chat_url, json=payload, headers=endpoint.headers, auth=endpoint.auth, proxy=endpoint.proxy
                ) as response:
                    status, headers = response.status, response.headers
                    body = (await response.read()).decode("utf-8", errors="replace")
            except aiohttp.ConnectionTimeoutError:  # nobody there, not a hang
                reason, detail = "connection", f"ConnectTimeout: {endpoint.url} did not accept a connection"
                retry_after = None
            except TimeoutError as error:  # aiohttp.SocketTimeoutError: no answer in `timeout`
                reason, detail = "timeout", f"{endpoint.url} sent nothing for {self.timeout:g} s ({error!r})"
                retry_after = None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as error:
                reason, detail, retry_after = "connection", f"{type(error).__name__}: {error}", None
            else:
                if 200 <= status < 300:
                    try:
                        data = json.loads(body)
                    except json.JSONDecodeError as error:  # a 200 whose body is not JSON (e.g. a proxy page)
                        reason, detail = "bad_response", f"{endpoint.url} sent a non-JSON body: {error}"
                        retry_after = None
                    else:
                        endpoint.failures, endpoint.down_until = 0, 0.0
                        return _chat_result(endpoint.url, data)
                else:
                    # Redact, then cut: a cut first could leave a token's head that no longer matches.
                    detail = self._redact(body)[:300]
                    if status in (400, 422) and level and self.json_mode in ("schema", "auto"):
                        # This server does not do that response_format: ask with the next one down.
                        # min(): requests in flight that asked for more must not raise it back.
                        if endpoint.format_level >= level:
                            logger.warning(
                                "%s refused %s (HTTP %d: %s); asking it with %s from now on",
                                endpoint.url, _FORMATS[level], status, detail[:120], _FORMATS[level - 1],
                            )
                        endpoint.format_level = min(endpoint.format_level, level - 1)
                        continue
                    if status in FATAL_STATUS:
                        raise FatalLLMError(
                            f"http_{status}",
                            f"{endpoint.url} answered {status} ({detail}); check the token "
                            "(OPENAI_API_KEY, or HF_TOKEN for Hugging Face hosts), --model and --base-url",
                        )
                    if status not in RETRY_STATUS:
                        raise LLMError(f"http_{status}", detail)
                    reason, retry_after = f"http_{status}", retry_after_seconds(headers)
            finally:
                endpoint.in_flight -= 1
            detail = self._redact(detail)
            if reason == "connection":  # avoid this endpoint (>= 1 s, growing) while another is up
                endpoint.down_until = time.monotonic() + max(1.0, self._delay(endpoint.failures, None))
                endpoint.failures += 1
            if retry >= self.max_retries:
                if reason == "connection" or reason in {f"http_{s}" for s in UNAVAILABLE_STATUS}:
                    raise EndpointsUnreachable(
                        reason,
                        f"no endpoint answered after {retry + 1} tries (last: {endpoint.url}, {detail}); "
                        "the run stopped with this request pending: check the server(s), then rerun "
                        "the same command to resume",
                    )
                raise LLMError(reason, f"gave up after {retry + 1} tries: {detail}")
            await asyncio.sleep(self._delay(retry, retry_after))
            retry += 1

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
