"""LLM backends for the generator: OpenAI-compatible endpoints and a local `transformers` model.

:class:`EndpointPool` sends chat requests to one or more OpenAI-compatible servers (vLLM, TGI,
llama.cpp, hosted APIs): a `POST {base_url}/chat/completions` over one pooled `aiohttp`
session with keep-alive. A whole generation run costs under 1 ms of client CPU per request,
so one event loop keeps hundreds of requests in flight (`huggingface_hub.AsyncInferenceClient`
cost 3-4 ms each and held a 64-way run to 0.83 of the ideal rate; see BENCHMARKS.md). The load
is shared: each request goes to the endpoint with the fewest requests in flight. Transient
faults (HTTP 429, 5xx, timeouts, dropped connections) are retried with exponential backoff and
jitter, waiting at least as long as a `Retry-After` (or `retry-after-ms`) header asks. Structured
outputs: with `json_mode="schema"` a request that carries its answer's schema
(:mod:`~e5mistral.synthetic.schemas`) asks for `response_format={"type": "json_schema", ...,
"strict": true}`; an endpoint that refuses it (400/422) is asked with `{"type": "json_object"}`
instead, and one that refuses that too, with no `response_format`, for good (each endpoint
on its own). `json_mode="auto"` starts at `json_object`, "on" always sends it, "off" never.

:class:`TransformersChatBackend` runs a local chat model for offline use: requests in flight are
batched into one `generate` call, and each answer's schema is enforced while decoding (with
`llguidance`, the `local` extra).

Both return a :class:`ChatResult` with the text and the token usage, and raise
:class:`LLMError` for a request that failed for good (`reason` like "http_500" or "timeout"),
or :class:`FatalLLMError` for faults that stop the run: no retry can fix them (bad token,
unknown model), or no endpoint can be reached (:class:`EndpointsUnreachable`).

Failed for good, or left pending? A failure is recorded in the log (and never asked again)
only when it belongs to the request: an unusable answer, an HTTP 500 or another error the
server answered with, a request that hung past the timeout. When the server itself is gone
(connection refused or reset, a connect timeout, 502/503, 429 after every retry), asking
again later would succeed, so the request is *not* recorded: :class:`EndpointsUnreachable`
stops the run and a rerun of the same command asks the pending requests again. Whether a
request ends in the log therefore never depends on when a server went away.

Secrets: tokens go only into the `Authorization` header. Every error detail (server bodies
included, which some servers use to echo the header back) passes through :func:`redact`,
and endpoints are named without URL credentials. `HF_TOKEN` is a Hub token, so it is sent
to Hugging Face hosts only; any other server gets `OPENAI_API_KEY` or an explicit token.

Example:
    >>> pool = EndpointPool(["http://localhost:8000/v1"], model="mistral-7b-instruct")  # doctest: +SKIP
    >>> result = await pool.chat([{"role": "user", "content": "Say hi"}], seed=1)  # doctest: +SKIP
    >>> result.text, result.completion_tokens  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import logging
import os
import random
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse, urlunparse

import aiohttp

if TYPE_CHECKING:
    from .schemas import AnswerSchema

__all__ = [
    "ChatResult",
    "EndpointPool",
    "EndpointsUnreachable",
    "FatalLLMError",
    "LLMError",
    "TransformersChatBackend",
    "accepts_schema",
    "redact",
    "token_from_env",
]

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})
# Answers that say "the server is not there (now)", not "this request failed": after every
# retry the request is left pending for a rerun instead of being recorded as a failure.
UNAVAILABLE_STATUS = frozenset({429, 502, 503})
TOKEN_ENV_VARS = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
JSON_MODES = ("schema", "auto", "on", "off")
# What an endpoint is asked for, by level: it steps down one level on each 400/422 to a request
# that asked for more than plain text (json_mode "schema" starts at 2, "auto" and "on" at 1).
_FORMATS = ("no response_format", "response_format json_object", "response_format json_schema")

logger = logging.getLogger(__name__)


@dataclass
class ChatResult:
    """One chat completion: the answer text, token counts from the response, who answered."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    endpoint: str = ""


class LLMError(RuntimeError):
    """A request that failed after all retries; `reason` is a stable tag for failure counts."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FatalLLMError(LLMError):
    """A fault that stops the run instead of being recorded (401/403/404): the request is left
    pending, so a rerun after the fix asks it again."""


class EndpointsUnreachable(FatalLLMError):
    """No endpoint answered a request through all its retries (connection refused or reset,
    connect timeout, 429/502/503). The run stops; its unanswered requests stay pending."""


_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1\2***"),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),
)


def _is_secret(value: str | None) -> bool:
    return bool(value) and value != "EMPTY" and len(value) >= 6


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """`text` with every token replaced by `***`: the given `secrets`, the tokens in the
    environment (OPENAI_API_KEY, HF_TOKEN, HUGGING_FACE_HUB_TOKEN), URL credentials, and
    anything shaped like a bearer, `hf_` or `sk-` token. Used on every error detail and
    endpoint name that may reach a log, the generation log or a card.

    Example:
        >>> redact("401: invalid header 'Bearer sk-abcdef123456' for https://me:pw@host/v1")
        "401: invalid header 'Bearer ***' for https://***@host/v1"
    """
    values = {v for v in secrets if _is_secret(v)}
    values |= {os.environ[n] for n in TOKEN_ENV_VARS if _is_secret(os.environ.get(n))}
    for value in sorted(values, key=len, reverse=True):  # longest first: a token may contain another
        text = text.replace(value, "***")
    text = re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _public_url(url: str) -> str:
    """The URL without user:password (what logs and records name the endpoint by)."""
    parts = urlparse(url)
    if parts.username is None and parts.password is None:
        return url
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    return urlunparse(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def _is_hf_host(host: str) -> bool:
    return host in ("hf.co", "huggingface.co") or host.endswith((".hf.co", ".huggingface.co", ".huggingface.cloud"))


def token_from_env(base_url: str | None = None) -> str:
    """The API token for `base_url`: `OPENAI_API_KEY`; else, for Hugging Face hosts only
    (huggingface.co, hf.co, Inference Endpoints on *.huggingface.cloud), `HF_TOKEN` or the
    token saved by `hf auth login`; else the placeholder "EMPTY" that keyless servers (vLLM,
    llama.cpp) accept. A Hub token is never sent to a third-party URL.

    Example:
        >>> os.environ.pop("OPENAI_API_KEY", None); os.environ.pop("HF_TOKEN", None)  # doctest: +SKIP
        >>> token_from_env("http://localhost:8000/v1")  # doctest: +SKIP
        'EMPTY'
    """
    if os.environ.get("OPENAI_API_KEY"):
        return os.environ["OPENAI_API_KEY"]
    if _is_hf_host(urlparse(base_url or "").hostname or ""):
        from huggingface_hub import get_token  # HF_TOKEN, else the saved login

        return get_token() or "EMPTY"
    return "EMPTY"


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
                raise ValueError(f"base URL {_public_url(url)!r}: expected http(s)://host[:port]/v1")
            self._secrets += [api_key, parts.password or "", parts.username or ""]
            auth = None
            if parts.username is not None or parts.password is not None:  # URL credentials win, as in curl
                auth = aiohttp.BasicAuth(parts.username or "", parts.password or "")
            self.endpoints.append(
                _Endpoint(
                    url=_public_url(url),
                    chat_url=chat_completions_url(_public_url(url)),
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


def accepts_schema(backend: Any) -> bool:
    """Whether `backend.chat` takes the `schema=` keyword (a custom backend written before
    structured outputs may not; the pipeline then asks it without schemas).

    Example:
        >>> class Old:
        ...     async def chat(self, messages, *, seed=None): ...
        >>> accepts_schema(Old()), accepts_schema(EndpointPool(["http://h:1/v1"], model="m"))
        (False, True)
    """
    try:
        parameters = inspect.signature(backend.chat).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return "schema" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


# --------------------------------------------------------------------------------------------
# The local backend: batched generate() with the answer's JSON schema enforced while decoding
# --------------------------------------------------------------------------------------------
# The constrained-decoding engine is llguidance (the `local` extra). Of the candidates that install
# here as wheels (xgrammar, outlines, llguidance, lm-format-enforcer) it is the one with no
# dependencies at all: one 3 MB abi3 Rust wheel, where xgrammar pulls triton and apache-tvm-ffi and
# outlines a stack of its own; lm-format-enforcer is pure Python and slower per token. Its masks
# are among the fastest (under 1 ms a row and token on SmolLM2's 49k vocabulary, as measured
# here; grammars compile in milliseconds), and it is kept up by the guidance team at Microsoft as
# the engine behind llama.cpp's, vLLM's, SGLang's and OpenAI's JSON-schema outputs. It plugs into
# transformers' `generate` as a LogitsProcessor (`_Decoding`). Masks are computed row by row in the
# generate thread: llguidance's parallel executor brings threads that fight torch's for the cores
# on a CPU host, and a batch of rows costs a few ms a step, small beside the model.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_ANY_OBJECT = {"type": "object"}


class _Grammars:
    """llguidance's view of the tokenizer, the compiled grammars, and a matcher per request."""

    def __init__(self, tokenizer: Any, eos_token_ids: list[int], vocab_size: int):
        from ..errors import UserError

        try:
            import llguidance
            import llguidance.hf
            import llguidance.numpy
        except ImportError:
            raise UserError(
                "structured outputs of a local model need llguidance: pip install 'e5mistral[local]' "
                "(or pass --json-mode off to let the model write free text)"
            ) from None
        from transformers import PreTrainedTokenizerFast

        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise UserError(
                f"structured outputs need a fast tokenizer (tokenizer.json), but the model has a "
                f"{type(tokenizer).__name__}; convert it, or pass --json-mode off"
            )
        self.llguidance = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_token_ids)
        self._grammars: dict[str, str] = {}

    def matcher(self, schema: dict[str, Any]) -> Any:
        """A fresh matcher of `schema` (its grammar compiled once); ValueError if it does not compile."""
        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = self.llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
            self._grammars[key] = grammar
        matcher = self.llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"the JSON schema does not compile: {matcher.get_error()}")
        return matcher

    def fill(self, matchers: list[tuple[Any, int]], bitmask: Any) -> None:
        for matcher, row in matchers:
            self.llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, row)


def _unpack_bitmask(bitmask: Any, vocab_size: int) -> Any:
    """Bool tensor (B, vocab_size) of llguidance's int32 bitmask (B, ceil(V / 32)): token t is
    allowed iff bit t % 32 of word t // 32 is set."""
    import torch

    words = torch.from_numpy(bitmask)  # (B, W) int32
    bits = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1  # (B, W, 32)
    allowed = bits.reshape(words.shape[0], -1).bool()  # (B, 32 W)
    if allowed.shape[1] >= vocab_size:
        return allowed[:, :vocab_size]
    return torch.cat([allowed, allowed.new_zeros(words.shape[0], vocab_size - allowed.shape[1])], dim=1)


class _Decoding:
    """The logits processor of one batched `generate` call: per row, mask the tokens the row's
    grammar forbids, then pick the next token (greedy, or sampled with the row's own seeded
    generator, so a request's answer does not depend on the requests it shares the batch with).

    It returns -inf everywhere but the chosen token, so `generate` runs with do_sample=False.
    """

    def __init__(self, matchers, generators, *, temperature, top_p, eos_token_ids, grammars):
        import numpy as np

        self.matchers = list(matchers)  # LLMatcher or None (free text), per row
        self.generators = generators  # torch.Generator per row, or None: greedy
        self.temperature = temperature
        self.top_p = top_p
        self.eos = set(eos_token_ids)
        self.eos_first = eos_token_ids[0]
        self.grammars = grammars
        self.finished = [False] * len(self.matchers)
        self.errors: list[str | None] = [None] * len(self.matchers)
        self.steps = 0
        self.bitmask = None
        if grammars is not None and any(m is not None for m in self.matchers):
            words = (grammars.tokenizer.vocab_size + 31) // 32
            self.bitmask = np.full((len(self.matchers), words), -1, dtype=np.int32)

    def __call__(self, input_ids, scores):
        import torch

        if self.steps:  # feed each row's last token to its grammar
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.finished[row]:
                    continue
                if token in self.eos:
                    self.finished[row] = True
                    continue
                matcher = self.matchers[row]
                if matcher is not None and not matcher.consume_token(token):
                    self.errors[row] = matcher.get_error() or f"token {token} refused"
                    self.matchers[row] = None
        self.steps += 1
        scores = scores.float()
        active = [(m, row) for row, m in enumerate(self.matchers) if m is not None and not self.finished[row]]
        if active:
            self.bitmask.fill(-1)  # rows without a grammar allow every token
            self.grammars.fill(active, self.bitmask)
            allowed = _unpack_bitmask(self.bitmask, scores.shape[1]).to(scores.device)
            scores = scores.masked_fill(~allowed, float("-inf"))
        for row, error in enumerate(self.errors):
            if error is not None and not self.finished[row]:  # a broken grammar: end the answer
                scores[row] = float("-inf")
                scores[row, self.eos_first] = 0.0
        chosen = scores.argmax(dim=-1)  # (B,)
        if self.generators is not None:
            for row, generator in enumerate(self.generators):
                if self.finished[row] or not torch.isfinite(scores[row]).any():
                    continue
                chosen[row] = self._sample(scores[row], generator)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.unsqueeze(1), 0.0)
        return out

    def _sample(self, logits, generator):
        import torch

        logits = logits / self.temperature
        if self.top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
            ordered, order = torch.sort(logits, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            drop = torch.cumsum(probs, dim=-1) - probs > self.top_p
            logits = logits.scatter(0, order[drop], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(0)


class _Aborted:
    """A stopping criterion that ends the whole `generate` call once `event` is set (on aclose)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class _Pending:
    messages: list[dict[str, str]]
    seed: int | None
    schema: AnswerSchema | None
    future: asyncio.Future | None = None


class TransformersChatBackend:
    """A local `transformers` chat model, for offline generation: batched, with the answer's JSON
    schema enforced while decoding.

    Requests in flight (the pipeline's `concurrency`) wait in a queue; one worker thread drains up
    to `batch_size` of them into each `generate` call (the chat template per conversation, left
    padding, one KV cache), so the model runs a batch at a time instead of one request at a time.
    The request/response contract is :class:`EndpointPool`'s (`await chat(messages, seed=...,
    schema=...)` returns a :class:`ChatResult`), so resume and failure records work unchanged.

    Structured outputs (`json_mode`, as for servers): "schema" (default) enforces the request's
    :class:`~e5mistral.synthetic.schemas.AnswerSchema` (its bounded form: every field present,
    non-blank, of bounded length; no other key) token by token with `llguidance` (the `local`
    extra), so even a small model answers with JSON that parses and fits; a request without a
    schema gets any JSON object. "auto"/"on": any JSON object. "off": free text.

    Sampling follows the recipe (temperature 1.0, top_p 1.0); `do_sample=False` or temperature 0
    decode greedily. Each request samples with its own generator seeded by `seed`, so its answer
    is the same whatever batch it lands in, and a rerun reproduces it on the same hardware
    (batch padding can change the float rounding, rarely a token).

    Args:
        max_new_tokens: completion limit per request (an answer cut short is unusable JSON).
        batch_size: most requests per `generate` call; a batch is never larger than the
            requests in flight, so give the pipeline a `concurrency` of at least this.
        max_field_chars: cap on every string field of the enforced schema (characters), on top
            of :data:`~e5mistral.synthetic.schemas.FIELD_MAX_CHARS`; None keeps those.

    Example:
        >>> backend = TransformersChatBackend("HuggingFaceTB/SmolLM2-135M-Instruct", batch_size=8)  # doctest: +SKIP
        >>> from e5mistral.synthetic.schemas import answer_schema
        >>> asyncio.run(backend.chat([{"role": "user", "content": "Write an STS triple."}], seed=0,
        ...                          schema=answer_schema("sts", "example"))).text  # doctest: +SKIP
        '{"S1": "...", "S2": "...", "S3": "..."}'
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 2048,
        device: str | None = None,
        torch_dtype: str = "auto",
        batch_size: int = 8,
        json_mode: str = "schema",
        max_field_chars: int | None = None,
        do_sample: bool = True,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..errors import UserError

        if json_mode not in JSON_MODES:
            raise ValueError(f"json_mode={json_mode!r}; use one of {', '.join(JSON_MODES)}")
        if batch_size < 1 or max_new_tokens < 1:
            raise UserError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens}: both must be 1 or more")
        if temperature < 0 or not 0 < top_p <= 1:
            raise UserError(f"temperature={temperature}, top_p={top_p}: need temperature >= 0 and 0 < top_p <= 1")
        self.model_name = model_name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(
                f"{model_name_or_path} has no chat template; use a chat (instruct) model, or set "
                "tokenizer.chat_template and save the tokenizer"
            )
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch_dtype)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.temperature = temperature
        self.top_p = top_p
        self.do_sample = bool(do_sample) and temperature > 0
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.json_mode = json_mode
        self.max_field_chars = max_field_chars
        self.eos_token_ids = self._eos_token_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        head = self.model.get_output_embeddings()  # its rows may outnumber the tokenizer's (padding)
        vocab_size = max(len(self.tokenizer), head.weight.shape[0] if head is not None else 0)
        self._grammars = _Grammars(self.tokenizer, self.eos_token_ids, vocab_size) if json_mode != "off" else None
        self._lock = threading.Lock()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batcher: asyncio.Task | None = None
        self._abort = threading.Event()  # set by aclose: ends the generate call in flight

    @property
    def name(self) -> str:
        return self.model_name

    def _eos_token_ids(self) -> list[int]:
        from ..errors import UserError

        ids: list[int] = []
        configured = self.model.generation_config.eos_token_id
        for value in [*(configured if isinstance(configured, list) else [configured]), self.tokenizer.eos_token_id]:
            if value is not None and value not in ids:
                ids.append(int(value))
        if not ids:
            raise UserError(f"{self.model_name} names no EOS token (tokenizer or generation_config); set one")
        return ids

    def _constraint(self, schema: AnswerSchema | None) -> dict[str, Any] | None:
        """The JSON schema enforced on a request's answer, or None for free text."""
        if self.json_mode == "off":
            return None
        if self.json_mode == "schema" and schema is not None:
            return schema.capped(self.max_field_chars)
        return _ANY_OBJECT

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        ids = encoded["input_ids"]
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)

    def _run(self, batch: list[_Pending]) -> list[ChatResult | LLMError]:
        """One `generate` call over `batch` (at most `batch_size`); an answer, or an LLMError, per request."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        results: list[ChatResult | LLMError | None] = [None] * len(batch)
        prompts = [self._prompt_ids(p.messages) for p in batch]
        matchers = []
        for i, pending in enumerate(batch):
            constraint = self._constraint(pending.schema)
            try:
                matchers.append(None if constraint is None else self._grammars.matcher(constraint))
            except ValueError as error:
                results[i] = LLMError("bad_schema", str(error))
        live = [i for i in range(len(batch)) if results[i] is None]
        if not live:
            return results
        width = max(len(prompts[i]) for i in live)
        input_ids = torch.full((len(live), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(live), width), dtype=torch.long)
        for row, i in enumerate(live):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            attention_mask[row, width - len(prompts[i]) :] = 1
        generators = None
        if self.do_sample:
            generators = []
            for i in live:
                seed = batch[i].seed if batch[i].seed is not None else random.randrange(2**63)
                generators.append(torch.Generator(device=self.device).manual_seed(seed))
        decoding = _Decoding(
            [matchers[i] for i in live],
            generators,
            temperature=self.temperature,
            top_p=self.top_p,
            eos_token_ids=self.eos_token_ids,
            grammars=self._grammars,
        )
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,  # _Decoding picks every token
            num_beams=1,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids,
        )
        with self._lock, torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([decoding]),
                stopping_criteria=StoppingCriteriaList([_Aborted(self._abort)]),
            )
        new_tokens = output[:, width:].tolist()  # (B, T_new)
        for row, i in enumerate(live):
            tokens = new_tokens[row]
            end = next((t + 1 for t, token in enumerate(tokens) if token in decoding.eos), len(tokens))
            if decoding.errors[row] is not None:
                results[i] = LLMError("constraint_error", f"decoding left the schema: {decoding.errors[row]}")
                continue
            results[i] = ChatResult(
                text=self.tokenizer.decode(tokens[:end], skip_special_tokens=True),
                prompt_tokens=len(prompts[i]),
                completion_tokens=end,
                endpoint=f"local:{self.model_name}",
            )
        return results

    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        *,
        seeds: list[int | None] | None = None,
        schemas: list[AnswerSchema | None] | None = None,
    ) -> list[ChatResult]:
        """Answer `conversations` synchronously, `batch_size` at a time; raises the first LLMError.

        Example:
            >>> backend.generate([[{"role": "user", "content": "Hi"}]] * 2, seeds=[0, 1])  # doctest: +SKIP
            [ChatResult(text='{...}', ...), ChatResult(text='{...}', ...)]
        """
        seeds = list(seeds) if seeds is not None else [None] * len(conversations)
        schemas = list(schemas) if schemas is not None else [None] * len(conversations)
        if not len(seeds) == len(schemas) == len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(seeds)} seeds and {len(schemas)} schemas")
        pending = [_Pending(m, s, sc) for m, s, sc in zip(conversations, seeds, schemas)]
        results: list[ChatResult] = []
        for start in range(0, len(pending), self.batch_size):
            for result in self._run(pending[start : start + self.batch_size]):
                if isinstance(result, LLMError):
                    raise result
                results.append(result)
        return results

    async def chat(
        self, messages: list[dict[str, str]], *, seed: int | None = None, schema: AnswerSchema | None = None
    ) -> ChatResult:
        """One completion, batched with the other requests in flight; raises LLMError."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._batcher is None or self._batcher.done():
            self._queue, self._loop = asyncio.Queue(), loop  # a queue belongs to one event loop
            self._abort.clear()
            self._batcher = loop.create_task(self._batches())
        future = loop.create_future()
        self._queue.put_nowait(_Pending(messages, seed, schema, future))
        return await future

    async def _batches(self) -> None:
        """Drain the queue into batches, one `generate` at a time in a worker thread."""
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(0)  # let the requests about to be asked join this batch
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]  # cancelled while waiting
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._run, batch)
            except asyncio.CancelledError:  # aclose, or the run was interrupted
                for pending in batch:
                    pending.future.cancel()
                raise
            except Exception as error:  # noqa: BLE001 - a model fault: every request of the batch sees it
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(batch, results):
                if pending.future.done():
                    continue
                if isinstance(result, LLMError):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    async def aclose(self) -> None:
        """Stop the batcher; a `generate` call in flight ends at its next token."""
        batcher, self._batcher = self._batcher, None
        if batcher is not None and not batcher.done():
            self._abort.set()
            batcher.cancel()
            try:
                await batcher
            except asyncio.CancelledError:
                pass
