"""A local `transformers` chat model as a generator backend, for offline generation.

Requests in flight are batched into one `generate` call, and each answer's schema is enforced
while decoding (:mod:`~e5mistral.synthetic.llm.grammar`, with `llguidance`, the `local` extra).
The request/response contract is :class:`~e5mistral.synthetic.llm.endpoints.EndpointPool`'s.

Example:
    >>> backend = TransformersChatBackend("HuggingFaceTB/SmolLM2-135M-Instruct", batch_size=8)  # doctest: +SKIP
    >>> backend.generate([[{"role": "user", "content": "Hi"}]], seeds=[0])[0].text  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import UserError
from .base import JSON_MODES, ChatResult, LLMError
from .grammar import ANY_OBJECT, Aborted, Decoding, Grammars

if TYPE_CHECKING:
    from ..schemas import AnswerSchema

__all__ = ["TransformersChatBackend"]


@dataclass
class _Pending:
    messages: list[dict[str, str]]
    seed: int | None
    schema: AnswerSchema | None
    future: asyncio.Future | None = None


class TransformersChatBackend:
    """A local `transformers` chat model, for offline generation: batched, with the answer's JSON
    schema enforced while decoding.

    Requests in flight (the pipeline's `concurrency`) wait in a queue; a batcher drains up to
    `batch_size` of them into each `generate` call (the chat template per conversation, left
    padding, one KV cache), so the model runs a batch at a time instead of one request at a time.
    The call runs on the event loop's own thread, the one that loaded the model: torch's OpenMP
    threads belong to the thread that starts them, and a second thread running the model (as
    `asyncio.to_thread` would) brings a second team, more busy threads than cores, and libgomp
    then stops spin-waiting between operations: on 2 cores a worker thread took 15% longer at
    batch 1 and 25% longer at batch 8 (means of 3 alternating runs). Ctrl-C still ends the call at
    its next token, unrecorded.
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
        self._grammars = Grammars(self.tokenizer, self.eos_token_ids, vocab_size) if json_mode != "off" else None
        self._lock = threading.Lock()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batcher: asyncio.Task | None = None
        self._abort = threading.Event()  # set by Ctrl-C (or aclose): ends the generate call in flight

    @property
    def name(self) -> str:
        return self.model_name

    def _eos_token_ids(self) -> list[int]:
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
        return ANY_OBJECT

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        ids = encoded["input_ids"]
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)

    def _run(self, batch: list[_Pending]) -> list[ChatResult | LLMError]:
        """One `generate` call over `batch` (at most `batch_size`); an answer, or an LLMError, per request.
        Ctrl-C during it sets the abort event (:meth:`_abort_on_sigint`): the caller drops the answers."""
        with self._abort_on_sigint():
            return self._generate_batch(batch)

    def _generate_batch(self, batch: list[_Pending]) -> list[ChatResult | LLMError]:
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
        decoding = Decoding(
            [matchers[i] for i in live],
            generators,
            temperature=self.temperature,
            top_p=self.top_p,
            eos_token_ids=self.eos_token_ids,
            grammars=self._grammars,
        )
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,  # Decoding picks every token
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
                stopping_criteria=StoppingCriteriaList([Aborted(self._abort)]),
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

    @contextlib.contextmanager
    def _abort_on_sigint(self):
        """While a batch runs on the main thread, Ctrl-C also sets the abort event (so its `generate`
        call ends at its next token) before the handler in place (asyncio's, or Python's) runs."""
        previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
        if not callable(previous):  # another thread, SIG_IGN, SIG_DFL or a handler set outside Python: as is
            yield
            return

        def handler(signum, frame):
            self._abort.set()
            previous(signum, frame)

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

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
        self._abort.clear()
        results: list[ChatResult] = []
        for start in range(0, len(pending), self.batch_size):
            batch = self._run(pending[start : start + self.batch_size])
            if self._abort.is_set():  # a SIGINT handler that did not raise: the batch was cut short
                raise LLMError("interrupted", "generation was interrupted (SIGINT); the batch's answers are cut short")
            for result in batch:
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
        """Drain the queue into batches, one `generate` call at a time."""
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(0)  # let the requests about to be asked join this batch
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]  # cancelled while waiting
            if not batch:
                continue
            try:
                results = self._run(batch)  # on this thread: see the class docstring
            except Exception as error:  # noqa: BLE001 - a model fault: every request of the batch sees it
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            if self._abort.is_set():  # Ctrl-C during the call: its answers are cut short, none is kept
                for pending in batch:
                    pending.future.cancel()
                while not self._queue.empty():
                    self._queue.get_nowait().future.cancel()
                return
            for pending, result in zip(batch, results):
                if pending.future.done():
                    continue
                if isinstance(result, LLMError):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    async def aclose(self) -> None:
        """Stop the batcher (between `generate` calls: a call in flight holds the event loop)."""
        batcher, self._batcher = self._batcher, None
        if batcher is not None and not batcher.done():
            self._abort.set()
            batcher.cancel()
            try:
                await batcher
            except asyncio.CancelledError:
                pass
