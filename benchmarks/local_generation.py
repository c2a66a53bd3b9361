"""Section 7, local generation: ``TransformersChatBackend`` answering 8 chat requests batched into
one ``generate`` call against the same 8 requests one at a time, as generated tokens/s (goal >= 4x),
with a table of tokens/s and seconds per request at each batch size (``Settings.gen_batches``).

The model is SmolLM2-135M's shape (a random-weight ``LlamaForCausalLM``: 30 layers x 576 hidden,
FFN 1536, 9 heads / 3 KV heads, vocab 49152, tied embeddings, rope theta 100000, fp32) built in
this process and saved with the tiny tokenizer and a chat template (the model's 49152 rows outnumber
the tokenizer's tokens, which the backend allows). Requests go through ``backend.chat`` (what
``run_generation``, so ``generate_data``, calls), all in flight at once; the backend's
``batch_size`` decides how many share a ``generate`` call. Plain path: ``json_mode="off"``, the
recipe's sampling (temperature 1.0, top_p 1.0, each request its own seeded generator).

Random weights never emit EOS reliably, so the plain runs stop only at ``max_new_tokens``: the
backend's EOS ids are set to one past the model's vocabulary, a token it cannot produce, and every
side generates exactly ``gen_new_tokens`` per request (checked). One extra row runs batch 8 with
each answer's JSON schema enforced (``json_mode="schema"``, llguidance) against the plain batch 8.

Example: ``print(section_local_generation(bench).text())``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import time
from pathlib import Path

import torch

from .harness import Section, Settings, fmt, real_shape
from .workload import Bench

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def make_generation_model(settings: Settings, folder: Path) -> Path:
    """Save the random Llama of ``settings.real_*`` (SmolLM2-135M's shape at full settings) with the tiny tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from e5mistral.testing import make_tiny_tokenizer, tiny_backbone_kwargs

    s = settings
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(**tiny_backbone_kwargs(
        "llama", vocab_size=s.real_vocab, **real_shape(s),
        max_position_embeddings=2048, tie_word_embeddings=True, attention_bias=False,
    ))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float().eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_conversations(n: int, settings: Settings, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` one-turn chats of ``gen_prompt_words`` random corpus words each (about 2.6 tokens a word)."""
    from importlib import resources

    words = resources.files("e5mistral").joinpath("data/tokenizer_corpus.txt").read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    low, high = settings.gen_prompt_words
    return [[{"role": "user", "content": " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))}]
            for _ in range(n)]


def timed_requests(backend, conversations, batch: int, schema=None) -> tuple[float, int]:
    """Seconds and generated tokens of ``conversations``, all in flight through ``backend.chat``, ``batch`` per call."""
    backend.batch_size = batch

    async def ask_all():
        try:
            return await asyncio.gather(*(backend.chat(m, seed=i, schema=schema) for i, m in enumerate(conversations)))
        finally:
            await backend.aclose()

    start = time.perf_counter()
    results = asyncio.run(ask_all())
    return time.perf_counter() - start, sum(r.completion_tokens for r in results)


def bare_generate(backend, conversations, new_tokens: int) -> tuple[float, int]:
    """Seconds and tokens of one bare ``model.generate`` over ``conversations`` (the backend's prompts, left
    padded, greedy, exactly ``new_tokens`` each): the model's own cost, without the backend around it."""
    prompts = [backend._prompt_ids(m) for m in conversations]
    width = max(map(len, prompts))
    input_ids = torch.full((len(prompts), width), backend.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):], attention_mask[row, width - len(ids):] = torch.tensor(ids), 1
    start = time.perf_counter()
    with torch.no_grad():
        output = backend.model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                        max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                        pad_token_id=backend.pad_token_id)
    return time.perf_counter() - start, (output.shape[1] - width) * len(prompts)


def section_local_generation(bench: Bench) -> Section:
    from e5mistral.synthetic.llm import TransformersChatBackend
    from e5mistral.synthetic.schemas import answer_schema

    s = bench.settings
    sec = Section(7, "Local generation: batched vs one request at a time")
    folder = make_generation_model(s, bench.work / "generation-model")
    constrained = importlib.util.find_spec("llguidance") is not None
    backend = TransformersChatBackend(str(folder), max_new_tokens=s.gen_new_tokens, device="cpu",
                                      torch_dtype="float32", json_mode="schema" if constrained else "off")
    real_eos = backend.eos_token_ids
    backend.json_mode, backend.eos_token_ids = "off", [s.real_vocab]  # plain path; an EOS the model cannot emit
    prompt_tokens = [len(backend._prompt_ids(m)) for m in make_conversations(max(s.gen_batches), s)]
    timed_requests(backend, make_conversations(2, s, seed=99), 2)  # warm-up: first-call costs, both shapes
    best: dict[int, tuple[float, int, int]] = {}  # batch -> (seconds, tokens, requests)
    every: dict[int, list[float]] = {}  # batch -> tokens/s of each repeat (the run-to-run spread)
    for repeat in range(s.gen_repeats):  # alternate, so a slow spell on a shared machine hits every size
        for batch in s.gen_batches:
            n = max(s.gen_requests, batch)
            print(f"    local generation: {n} requests, batch {batch}, run {repeat + 1} of {s.gen_repeats}", flush=True)
            seconds, tokens = timed_requests(backend, make_conversations(n, s), batch)
            if tokens != n * s.gen_new_tokens:
                sec.notes.append(f"batch {batch}: {tokens} tokens generated for {n} x {s.gen_new_tokens} planned.")
            every.setdefault(batch, []).append(tokens / seconds)
            if batch not in best or seconds < best[batch][0]:
                best[batch] = (seconds, tokens, n)
    rate = {b: tokens / seconds for b, (seconds, tokens, _) in best.items()}
    main, one = s.gen_batch, 1
    ratio = rate[main] / rate[one]
    sec.add(f"generated tokens/s, batch {main} (vs the same {best[main][2]} requests one at a time)",
            fmt(rate[main], "tok/s"), fmt(rate[one], "tok/s"), ratio, ">= 4x", ratio >= 4)
    for batch in s.gen_batches:
        if batch in (main, one):
            continue
        sec.add(f"generated tokens/s, batch {batch} ({best[batch][2]} requests; vs batch 1)",
                fmt(rate[batch], "tok/s"), fmt(rate[one], "tok/s"), rate[batch] / rate[one])
    spread = ", ".join(f"{b / a:.2f}x" for a, b in zip(every[one], every[main]))
    sec.notes.append(f"Batch {main} / batch 1 per alternating repeat (run-to-run spread): {spread}.")
    table = ", ".join(f"batch {b}: {rate[b]:.0f} tok/s, {best[b][0] / best[b][2]:.2f} s per request "
                      f"({best[b][2]} requests in {best[b][0]:.1f} s)" for b in s.gen_batches)
    sec.notes.append(f"How generation grows with the batch (seconds per request = wall time / requests): {table}.")
    seconds, tokens = bare_generate(backend, make_conversations(best[main][2], s), s.gen_new_tokens)
    bare = tokens / seconds
    plain = best[main][1] / best[main][0]
    sec.add(f"batch {main} through the backend (vs a bare model.generate of the same batch)", fmt(plain, "tok/s"),
            fmt(bare, "tok/s"), plain / bare, "~1x (the backend adds little)", plain / bare >= 0.9)
    if constrained:
        backend.json_mode, backend.eos_token_ids = "schema", real_eos
        schema = answer_schema("sts", "example")
        seconds, tokens = timed_requests(backend, make_conversations(main, s), main, schema=schema)
        backend.json_mode, backend.eos_token_ids = "off", [s.real_vocab]
        seconds_plain, tokens_plain = best[main][0] * main / best[main][2], best[main][1] * main / best[main][2]
        c_rate = tokens / seconds
        sec.add(f"batch {main} with the JSON schema enforced (llguidance; vs plain batch {main})", fmt(c_rate, "tok/s"),
                fmt(tokens_plain / seconds_plain, "tok/s"), c_rate / (tokens_plain / seconds_plain))
        sec.notes.append(
            f"Schema row: the `sts` example schema enforced token by token, with the model's real EOS (a finished "
            f"answer stops early; {tokens} tokens generated for {main} x {s.gen_new_tokens} at most), one run."
        )
    else:
        sec.notes.append("llguidance is not installed: no schema-constrained row.")
    sec.notes.append(
        f"Model: random LlamaForCausalLM, {s.real_layers} layers x {s.real_hidden} hidden, FFN {s.real_intermediate}, "
        f"{s.real_heads} heads / {s.real_kv_heads} KV heads, vocab {s.real_vocab}, tied embeddings, fp32, CPU "
        f"(SmolLM2-135M's shape at full settings); tokenizer: the tiny one ({len(backend.tokenizer)} tokens) with a "
        f"plain chat template. Prompts of {min(prompt_tokens)}-{max(prompt_tokens)} tokens (left-padded in a batch), "
        f"{s.gen_new_tokens} new tokens per request."
    )
    sec.notes.append(
        "Every request is in flight at once through `backend.chat` (run_generation's call); the backend's "
        "`batch_size` sets how many share a `generate` call (batch 1: one request at a time). Random weights never "
        "emit EOS reliably, so for the plain runs the backend's EOS is a token past the vocabulary: every request "
        f"generates exactly {s.gen_new_tokens} tokens on every side (counted from the answers). json_mode=\"off\", "
        f"sampling at temperature 1.0; best of {s.gen_repeats} alternating runs per batch size after one warm-up; "
        "times include tokenization, prefill and decoding."
    )
    sec.notes.append(
        f"The bare-generate row: the same {best[main][2]} prompts through `model.generate` directly (left padded, "
        f"greedy, exactly {s.gen_new_tokens} new tokens, one run): how much of a batch's time is the model itself. "
        "On a CPU the batched decode step is not free (more rows of matrix products, attention over every row's "
        "cache), so the batch-8 speed-up depends on the cores and their memory bandwidth; a GPU gains more."
    )
    del backend
    return sec

