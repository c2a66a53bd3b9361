"""LLM backends for the generator: OpenAI-compatible endpoints and a local `transformers` model.

:class:`EndpointPool` sends chat requests to one or more OpenAI-compatible servers (vLLM, TGI,
llama.cpp, hosted APIs): a `POST {base_url}/chat/completions` over one pooled `aiohttp`
session with keep-alive. A whole generation run costs under 1 ms of client CPU per request,
so one event loop keeps hundreds of requests in flight (`huggingface_hub.AsyncInferenceClient`
cost 3-4 ms each and held a 64-way run to 0.83 of the ideal rate; see BENCHMARKS.md). The load
is shared: each request goes to the endpoint with the fewest requests in flight. Transient
faults (HTTP 429, 5xx, timeouts, dropped connections) are retried with exponential backoff and
jitter, waiting at least as long as a `Retry-After` (or `retry-after-ms`) header asks. JSON mode
(`response_format={"type": "json_object"}`) is requested where the server accepts it; with
`json_mode="auto"` an endpoint that rejects it (400/422) is asked again without it, for good.

:class:`TransformersChatBackend` runs a local chat model for offline use.

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
import json
import os
import random
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse, urlunparse

import aiohttp

__all__ = [
    "ChatResult",
    "EndpointPool",
    "EndpointsUnreachable",
    "FatalLLMError",
    "LLMError",
    "TransformersChatBackend",
    "redact",
    "token_from_env",
]

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})
# Answers that say "the server is not there (now)", not "this request failed": after every
# retry the request is left pending for a rerun instead of being recorded as a failure.
UNAVAILABLE_STATUS = frozenset({429, 502, 503})
TOKEN_ENV_VARS = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


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
    json_mode: bool
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
        json_mode: "auto" (ask for JSON mode, drop it where rejected), "on" or "off".
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
        if json_mode not in ("auto", "on", "off"):
            raise ValueError(f"json_mode={json_mode!r}; use 'auto', 'on' or 'off'")
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
                    json_mode=json_mode != "off",
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

    async def chat(self, messages: list[dict[str, str]], *, seed: int | None = None) -> ChatResult:
        """One completion of `messages`, retried on transient faults; raises LLMError."""
        retry = 0
        while True:
            endpoint = self._pick()
            use_json = endpoint.json_mode
            endpoint.in_flight += 1
            payload = {"model": self.model, "messages": messages}
            payload.update({key: value for key, value in self.sampling.items() if value is not None})
            if seed is not None:
                payload["seed"] = seed
            if use_json:
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
                    if status in (400, 422) and use_json and self.json_mode == "auto":
                        endpoint.json_mode = False  # this server does not do JSON mode: ask plainly
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


class TransformersChatBackend:
    """A local `transformers` chat model, for offline generation (one request at a time).

    Sampling follows the recipe (temperature 1.0, top_p 1.0); each request is seeded, so a
    rerun reproduces its answers on the same hardware. There is no JSON mode: the prompts ask
    for JSON and the answer is parsed leniently (fences and prose are tolerated).

    Example:
        >>> backend = TransformersChatBackend("Qwen/Qwen2.5-0.5B-Instruct", max_new_tokens=256)  # doctest: +SKIP
        >>> asyncio.run(backend.chat([{"role": "user", "content": "Hi"}], seed=0)).text  # doctest: +SKIP
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
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_name = model_name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch_dtype)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.generation = {
            "do_sample": True,
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
        }
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.model_name

    def _generate(self, messages: list[dict[str, str]], seed: int | None) -> ChatResult:
        import torch

        with self._lock:
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self.device)
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():
                output = self.model.generate(**inputs, **self.generation)
            new_tokens = output[0, inputs["input_ids"].shape[1] :]  # (T_new,)
            text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
            return ChatResult(
                text=text,
                prompt_tokens=int(inputs["input_ids"].shape[1]),
                completion_tokens=int(new_tokens.shape[0]),
                endpoint=f"local:{self.model_name}",
            )

    async def chat(self, messages: list[dict[str, str]], *, seed: int | None = None) -> ChatResult:
        """One completion, run in a worker thread so the event loop stays responsive."""
        return await asyncio.to_thread(self._generate, messages, seed)

    async def aclose(self) -> None:
        return None
