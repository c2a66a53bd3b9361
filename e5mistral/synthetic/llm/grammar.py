"""Constrained decoding for the local backend: each answer's JSON schema enforced token by token.

The engine is llguidance (the `local` extra). Of the candidates that install here as wheels
(xgrammar, outlines, llguidance, lm-format-enforcer) it is the one with no dependencies at all: one
3 MB abi3 Rust wheel, where xgrammar pulls triton and apache-tvm-ffi and outlines a stack of its
own; lm-format-enforcer is pure Python and slower per token. Its masks are among the fastest
(under 1 ms a row and token on SmolLM2's 49k vocabulary, as measured here; grammars compile in
milliseconds), and it is kept up by the guidance team at Microsoft as the engine behind
llama.cpp's, vLLM's, SGLang's and OpenAI's JSON-schema outputs. It plugs into transformers'
`generate` as a LogitsProcessor (:class:`Decoding`). Masks are computed row by row in the
generate thread: llguidance's parallel executor brings threads that fight torch's for the cores on
a CPU host, and a batch of rows costs a few ms a step, small beside the model.

Example:
    >>> grammars = Grammars(tokenizer, eos_token_ids=[2], vocab_size=len(tokenizer))  # doctest: +SKIP
    >>> matcher = grammars.matcher({"type": "object"})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ...errors import UserError

__all__ = ["ANY_OBJECT", "Aborted", "Decoding", "Grammars"]

_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}


class Grammars:
    """llguidance's view of the tokenizer, the compiled grammars, and a matcher per request."""

    def __init__(self, tokenizer: Any, eos_token_ids: list[int], vocab_size: int):
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


class Decoding:
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
        best, chosen = scores.max(dim=-1)  # (B,): greedy's pick
        if self.generators is not None:
            # rows still writing with a token left (a row with none keeps the argmax)
            live = ~torch.tensor(self.finished, device=scores.device) & torch.isfinite(best)
            rows = live.nonzero().squeeze(1).tolist()
            if rows:
                draws = torch.stack([self._uniform(self.generators[row]) for row in rows]).to(scores.device)
                if len(rows) == len(self.finished):
                    chosen = self._sample(scores, draws)
                else:
                    chosen[rows] = self._sample(scores[rows], draws)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.unsqueeze(1), 0.0)
        return out

    @staticmethod
    def _uniform(generator):
        import torch

        return torch.rand((), generator=generator, dtype=torch.float64, device=generator.device)

    def _sample(self, logits, uniforms):
        """One token per row of `logits` (R, V), by inverse-CDF sampling with the row's uniform draw
        in [0, 1) (R,): the first token whose cumulative probability exceeds it. One vectorised pass
        over the rows (a per-row `torch.multinomial` cost about 1 ms a row on a 49k vocabulary)."""
        import torch

        if self.temperature != 1.0:
            logits = logits / self.temperature
        order = None
        if self.top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
            logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(logits, dim=-1)
            logits = logits.masked_fill(torch.cumsum(probs, dim=-1) - probs > self.top_p, float("-inf"))
        cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)  # non-decreasing: probability 0 is never picked
        total = cdf[:, -1:].contiguous()
        picked = torch.searchsorted(cdf, uniforms.to(cdf.dtype).unsqueeze(1) * total, right=True).squeeze(1)
        last = torch.searchsorted(cdf, total).squeeze(1)  # the last token with any weight
        picked = torch.minimum(picked, last)  # a draw rounded up to the total would fall past the end
        return picked if order is None else order.gather(1, picked.unsqueeze(1)).squeeze(1)


class Aborted:
    """A stopping criterion that ends the whole `generate` call once `event` is set (on aclose)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
