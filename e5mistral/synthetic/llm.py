"""LLM backends for the generator: OpenAI-compatible endpoints and a local `transformers` model.

:class:`EndpointPool` sends chat requests to one or more OpenAI-compatible servers (vLLM, TGI,
llama.cpp, hosted APIs) through `huggingface_hub.AsyncInferenceClient(base_url=...)`. The load
is shared: each request goes to the endpoint with the fewest requests in flight. Transient
faults (HTTP 429, 5xx, timeouts, dropped connections) are retried with exponential backoff and
jitter, waiting at least as long as a `Retry-After` (or `retry-after-ms`) header asks. JSON mode
(`response_format={"type": "json_object"}`) is requested where the server accepts it; with
`json_mode="auto"` an endpoint that rejects it (400/422) is asked again without it, for good.

:class:`TransformersChatBackend` runs a local chat model for offline use.

Both return a :class:`ChatResult` with the text and the token usage, and raise
:class:`LLMError` for a request that failed for good (`reason` like "http_500" or "timeout"),
or :class:`FatalLLMError` for faults that no retry can fix (bad token, unknown model).

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
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OfflineModeIsEnabled

__all__ = ["ChatResult", "EndpointPool", "FatalLLMError", "LLMError", "TransformersChatBackend", "token_from_env"]

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})


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
    """A fault that retrying cannot fix (401/403/404): the run stops instead of recording it."""


def token_from_env(base_url: str | None = None) -> str:
    """The API token: `OPENAI_API_KEY`, else `HF_TOKEN`, else (for huggingface.co URLs only)
    the token saved by `hf auth login`, else the placeholder "EMPTY" that keyless servers
    (vLLM, llama.cpp) accept. A saved Hub login is never sent to a third-party URL.

    Example:
        >>> os.environ.pop("OPENAI_API_KEY", None); os.environ.pop("HF_TOKEN", None)  # doctest: +SKIP
        >>> token_from_env("http://localhost:8000/v1")  # doctest: +SKIP
        'EMPTY'
    """
    for name in ("OPENAI_API_KEY", "HF_TOKEN"):
        if os.environ.get(name):
            return os.environ[name]
    host = urlparse(base_url or "").hostname or ""
    if host == "hf.co" or host.endswith((".hf.co", "huggingface.co")):
        from huggingface_hub import get_token

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


@dataclass
class _Endpoint:
    url: str
    client: AsyncInferenceClient
    json_mode: bool
    in_flight: int = 0


class EndpointPool:
    """Chat completions from one or more OpenAI-compatible endpoints sharing the load.

    Args:
        base_urls: the servers' base URLs, e.g. `http://host:8000/v1` (`/chat/completions` is
            appended by `AsyncInferenceClient`).
        model: the model name sent in the payload.
        token: API token; default :func:`token_from_env`. Never written anywhere.
        json_mode: "auto" (ask for JSON mode, drop it where rejected), "on" or "off".
        temperature, top_p: sampling, 1.0 and 1.0 as in the recipe.
        max_tokens: completion limit, None for the server default.
        timeout: seconds before a request counts as hung and is retried.
        max_retries: retries of transient faults (429, 5xx, timeouts) per request.
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
        self.endpoints = [
            _Endpoint(
                url=url,
                client=AsyncInferenceClient(base_url=url, api_key=token or token_from_env(url), timeout=timeout),
                json_mode=json_mode != "off",
            )
            for url in base_urls
        ]
        self._next = 0

    @property
    def name(self) -> str:
        return self.model

    def _pick(self) -> _Endpoint:
        # Fewest in flight; ties broken round-robin so idle endpoints all get work.
        n = len(self.endpoints)
        order = [self.endpoints[(self._next + i) % n] for i in range(n)]
        self._next = (self._next + 1) % n
        return min(order, key=lambda e: e.in_flight)

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
            try:
                output = await endpoint.client.chat_completion(
                    messages,
                    model=self.model,
                    seed=seed,
                    response_format={"type": "json_object"} if use_json else None,
                    **self.sampling,
                )
            except OfflineModeIsEnabled:
                raise FatalLLMError(
                    "offline",
                    f"huggingface_hub refuses every HTTP request, {endpoint.url} included, while "
                    "HF_HUB_OFFLINE=1; unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) for generation",
                ) from None
            except InferenceTimeoutError as error:
                reason, detail, retry_after = "timeout", str(error), None
            except (httpx2.TransportError, ConnectionError) as error:
                reason, detail, retry_after = "connection", f"{type(error).__name__}: {error}", None
            except json.JSONDecodeError as error:  # a 200 whose body is not JSON (e.g. a proxy page)
                reason, detail, retry_after = "bad_response", f"{endpoint.url} sent a non-JSON body: {error}", None
            except HfHubHTTPError as error:
                status = error.response.status_code if error.response is not None else 0
                body = error.response.text[:300] if error.response is not None else ""
                if status in (400, 422) and use_json and self.json_mode == "auto":
                    endpoint.json_mode = False  # this server does not do JSON mode: ask plainly
                    continue
                if status in FATAL_STATUS:
                    raise FatalLLMError(
                        f"http_{status}",
                        f"{endpoint.url} answered {status} ({body}); check the token "
                        "(OPENAI_API_KEY / HF_TOKEN), --model and --base-url",
                    ) from None
                if status not in RETRY_STATUS:
                    raise LLMError(f"http_{status}", body) from None
                reason, detail = f"http_{status}", body
                retry_after = retry_after_seconds(error.response.headers)
            else:
                choice = output.choices[0] if output.choices else None
                text = choice.message.content if choice is not None and choice.message else None
                if text is None:
                    raise LLMError("empty_answer", f"{endpoint.url} returned no message content")
                usage = output.usage
                return ChatResult(
                    text=text,
                    prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0) if usage else 0,
                    completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0) if usage else 0,
                    endpoint=endpoint.url,
                )
            finally:
                endpoint.in_flight -= 1
            if retry >= self.max_retries:
                raise LLMError(reason, f"gave up after {retry + 1} tries: {detail}")
            await asyncio.sleep(self._delay(retry, retry_after))
            retry += 1

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.client.close()


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
